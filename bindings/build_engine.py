"""cffi build of the C data plane (mooncake_store._engine).

Every csrc/*.c file is compiled into one extension. The C declarations that
Python may call live beside the code in csrc/*.cdef (one per C module), so
adding a transport means adding a .c/.h/.cdef triple and nothing here.
"""
import glob
import os
import sysconfig

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.normpath(os.path.join(HERE, "..", "csrc"))


def _have_header(name):
    inc = [sysconfig.get_config_var("INCLUDEDIR") or "/usr/include", "/usr/include",
           "/usr/local/include"]
    return any(os.path.exists(os.path.join(d, name)) for d in inc)


def _rel(path):
    # setuptools wants source paths relative to the project root.
    return os.path.relpath(path, os.path.join(HERE, ".."))


cdefs = sorted(glob.glob(os.path.join(CSRC, "*.cdef")))
sources = sorted(glob.glob(os.path.join(CSRC, "*.c")))
headers = sorted(os.path.basename(h) for h in glob.glob(os.path.join(CSRC, "*.h")))

define_macros = [("_GNU_SOURCE", "1")]
libraries = ["pthread"]
if _have_header("infiniband/verbs.h") and os.environ.get("MCS_NO_RDMA") != "1":
    define_macros.append(("MCS_HAVE_RDMA", "1"))
    libraries.append("ibverbs")

ffibuilder = FFI()
for path in cdefs:
    with open(path) as f:
        ffibuilder.cdef(f.read())

ffibuilder.set_source(
    "mooncake_store._engine",
    "".join(f'#include "{h}"\n' for h in headers),
    sources=[_rel(s) for s in sources],
    include_dirs=[_rel(CSRC)],
    define_macros=define_macros,
    libraries=libraries,
    extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fvisibility=hidden"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
