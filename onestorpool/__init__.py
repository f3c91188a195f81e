"""opennebula-storpool: the StorPool storage add-on for OpenNebula.

Kept import-free on purpose: drivers import submodules directly and must start fast.
"""

__version__ = "0.1.0"
