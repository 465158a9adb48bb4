"""TDB's wire protocol: pydantic models, enums and their tables, TDB's request conversion, the
byte-compatible JSON encoding of responses, and wire paths for errors."""
