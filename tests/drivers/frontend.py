"""Driver test helpers: the product's sandbox front-end (onestorpool.sandbox.frontend)."""

from onestorpool.sandbox.frontend import (
    REMOTES,
    FrontEnd,
    datastore_xml,
    ds_action,
    image_xml,
    make_frontend,
)

__all__ = ["REMOTES", "FrontEnd", "datastore_xml", "ds_action", "image_xml", "make_frontend"]
