# The cffi extension (mooncake_store._engine) is built from csrc/ at install time.
from setuptools import setup

setup(cffi_modules=["bindings/build_engine.py:ffibuilder"])
