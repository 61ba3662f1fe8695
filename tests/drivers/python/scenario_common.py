"""What the Python driver scenarios share: their settings from the
environment, the values they use, and how a returned value is printed."""

import datetime
import decimal
import os

WORKERS = int(os.environ.get("DRIVER_WORKERS", "4"))
REPS = int(os.environ.get("DRIVER_REPS", "3"))
ZONES = ["America/New_York", "Asia/Tokyo", "Europe/Paris", "Australia/Adelaide"]
# Texts that name session effects only in literals, comments and aliases:
# the driver's prepared statements must survive them.
LITERALS = [
    "SELECT 'please discard all of these notes'",
    "SELECT 1 /* deallocate all */",
    "SELECT $$DISCARD ALL$$",
    "SELECT 'listen to this' AS listen_count",
]


def plain(v, row_type=None):
    """A JSON-able rendering of a value the driver returned; `row_type` is
    the driver's own row class, printed as a list of its values."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    if isinstance(v, decimal.Decimal):
        return "numeric:" + str(v)
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if row_type is not None and isinstance(v, row_type):
        return [plain(x, row_type) for x in v.values()]
    if isinstance(v, (list, tuple)):
        return [plain(x, row_type) for x in v]
    if isinstance(v, dict):
        return {k: plain(x, row_type) for k, x in v.items()}
    return v
