"""Reading and writing competition files: tiles, masks, metadata, atomic writers."""
