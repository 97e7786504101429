"""annserve's HTTP service: collections, durable vectors, the dual main/fresh index."""
