"""Transactions, blocks, certificates, the block store, the application and the offline audit."""
