"""Reading and writing competition files: tiles, masks, metadata, atomic writers."""

from kelpseg._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "read_tile": "tiles",
        "read_mask": "tiles",
        "write_mask": "tiles",
        "write_probability": "tiles",
        "tile_info": "tiles",
        "atomic_path": "atomic",
        "write_json": "atomic",
        "write_text": "atomic",
        "check_data": "integrity",
        "read_yaml": "yaml_file",
    },
)
