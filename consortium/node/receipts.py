"""Moved to consortium/protocol/receipts.py."""

# TEMPORARY re-export for consortium/cli until the CLI split lands (issue 14)
from consortium.protocol.receipts import ReceiptFormatError, describe, loads, verify_receipt

__all__ = ["ReceiptFormatError", "describe", "loads", "verify_receipt"]
