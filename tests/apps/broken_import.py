"""An app module that fails while being imported."""

raise RuntimeError("this module cannot be imported")
