"""The TensorRT Python API surface: what vitdeploy uses, read off its source with `ast`, and what a TensorRT release
defines: read off the released Python bindings themselves (the `tensorrt-cu12-bindings` wheel of that release), or
off the pybind11 sources of the bindings (`python/src/**/*.cpp` of NVIDIA/TensorRT at a release tag).

    python tests/tensorrt_api.py extract-wheel 10.3.0 > tests/data/tensorrt_api_10.txt
    python tests/tensorrt_api.py extract /path/to/TensorRT/python/src > tests/data/tensorrt_api_10.txt
    python tests/tensorrt_api.py uses

`extract-wheel` needs pip, a C compiler and binutils (readelf, nm), not TensorRT and not a GPU: the bindings module
links against the TensorRT libraries, so each library it names is stood in for by a stub that defines the symbols it
takes from them (the library's entry points, never called), the module is imported in a child process, and every
class, member, enum value and module-level name is read off it with `dir()`. No TensorRT code runs.

A list holds one name per line: a class or enum (`Runtime`, `TensorIOMode`), a member (`Runtime.DLA_core`,
`ICudaEngine.get_tensor_name`) or an enum value (`TensorIOMode.INPUT`), and `<module>.NAME` for module-level
functions and attributes (`<module>.nptype`, `<module>.__version__`). `tests/test_tensorrt_api.py` checks every use
against each committed list, so a renamed or removed call is caught without a GPU.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USERS = [ROOT / "vitdeploy" / "runtime" / "trt.py", *sorted((ROOT / "vitdeploy" / "deploy").glob("*.py")),
         ROOT / "profiling" / "profile_engine.py"]

# ------------------------------------------------------------------------------------------- extraction
_CLASS = re.compile(r"py::(?:class_|enum_)<\s*([A-Za-z_][\w:]*)[^>]*>\s*\(\s*\w+\s*,\s*\"(\w+)\"")
_MEMBER = re.compile(r"\.\s*(?:def|def_property|def_property_readonly|def_readwrite|def_readonly|def_static|value)"
                     r"\s*\(\s*\"(\w+)\"")
_MODULE = re.compile(r"\bm\s*\.\s*def\s*\(\s*\"(\w+)\"|\bm\s*\.\s*attr\s*\(\s*\"(\w+)\"\s*\)")


def extract(text: str) -> set[str]:
    """Names a pybind11 source defines: each py::class_/py::enum_ and the members chained onto it."""
    names: set[str] = set()
    starts = [(m.start(), m.group(2)) for m in _CLASS.finditer(text)]
    for i, (start, cls) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        names.add(cls)
        body = text[start:end].split(";", 1)[0]  # the chain ends at the statement's semicolon
        names.update(f"{cls}.{m}" for m in _MEMBER.findall(body))
    for fn, attr in _MODULE.findall(text):
        names.add(f"<module>.{fn or attr}")
    return names


def extract_tree(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in sorted(Path(folder).rglob("*.cpp")):
        names |= extract(path.read_text(errors="replace"))
    return names


def names_of(module) -> set[str]:
    """The names a loaded bindings module defines, in the lists' form (nested classes and enums by their own name
    too, as `missing` walks a chain `A.B.C` through `A.B` and `B.C`)."""
    names: set[str] = set()

    def add_class(name: str, cls: type, depth: int = 0) -> None:
        names.add(name)
        for m in dir(cls):
            if m.startswith("__"):
                continue  # dunders come with every class (`missing` never asks)
            names.add(f"{name}.{m}")
            inner = getattr(cls, m, None)
            if isinstance(inner, type) and depth < 2 and inner.__name__ == m:
                add_class(m, inner, depth + 1)  # ILogger.Severity: also "Severity" and "Severity.ERROR"

    for n in dir(module):
        if n.startswith("_") and n != "__version__":
            continue
        obj = getattr(module, n)
        if isinstance(obj, type) and getattr(obj, "__module__", "").split(".")[-1] in ("tensorrt", module.__name__):
            add_class(n, obj)
        elif not isinstance(obj, type(module)):  # functions and values; not the modules it imported
            names.add(f"<module>.{n}")
    return names


_LIBS_SKIP = re.compile(r"^(Py|_Py|_ITM_|_ZGTt|__gmon_start__|__pthread|pthread_|dl[a-z]+$)")


def extract_wheel(version: str, package: str = "tensorrt-cu12-bindings") -> set[str]:
    """The names of a released bindings wheel (see the module doc): download, stand the TensorRT libraries in with
    stubs, import in a child process, read the names."""
    import json
    import os
    import subprocess
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory(prefix="trt-api-") as tmp:
        tmp_path = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
                        f"{package}=={version}"], check=True)
        wheel = next(tmp_path.glob("*.whl"))
        zipfile.ZipFile(wheel).extractall(tmp_path / "site")
        so = next((tmp_path / "site").rglob("tensorrt*.so"))
        needed = re.findall(r"\(NEEDED\).*\[(libnv[\w.+-]+)\]",
                            subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout)
        undefined = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True,
                                   check=True).stdout.split()
        entry = sorted({w for w in undefined if re.fullmatch(r"[A-Za-z_]\w*", w) and not _LIBS_SKIP.match(w)
                        and w not in ("U", "w")})
        stub = tmp_path / "stub"
        stub.mkdir()
        (stub / "stub.c").write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in entry))
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(stub / "libstub.so"), str(stub / "stub.c")], check=True)
        for lib in needed:
            (stub / lib).write_bytes((stub / "libstub.so").read_bytes())
        package_dir = so.parent
        child = (f"import json, sys; sys.path.insert(0, {str(package_dir.parent)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r}); "
                 f"import {package_dir.name} as trt; from tensorrt_api import names_of; "
                 f"print(json.dumps(sorted(names_of(trt))))")
        env = {**os.environ, "LD_LIBRARY_PATH": str(stub)}
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, check=True).stdout
        return set(json.loads(out))


# ------------------------------------------------------------------------------------------------- uses
_TRT_NAMES = {"trt", "_trt", "tensorrt"}
# parameters that hold TensorRT objects in the files above (the builder passed to the helpers of tensorrt_build.py)
_TRT_PARAMS = {"builder", "network", "parser"}


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _key(node: ast.AST) -> str | None:
    """'x' for a name, 'self.x' for an attribute of self: what a TensorRT object can be bound to."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def _is_module(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id in _TRT_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr in _TRT_NAMES and _key(node) is not None)


class _Uses(ast.NodeVisitor):
    """Module uses (`trt.X`, `trt.X.Y`) and member uses on objects TensorRT made (`engine.get_tensor_name`): a name
    assigned from a call or attribute rooted in the module or in such an object is such an object too."""

    def __init__(self, helpers: set[str] = frozenset()) -> None:
        self.helpers = helpers  # functions of the same file that build TensorRT objects from the module's pieces
        self.module: set[str] = set()
        self.members: set[str] = set()
        self.objects: set[str] = set()

    def _from_trt(self, node: ast.AST) -> bool:
        while True:
            if _is_module(node) or _key(node) in self.objects:
                return True
            if not isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
                return False
            node = node.func if isinstance(node, ast.Call) else node.value

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.objects |= {a.arg for a in node.args.args if a.arg in _TRT_PARAMS}
        self.generic_visit(node)

    def _makes_trt(self, value: ast.AST) -> bool:
        """A value rooted in TensorRT, or a call handed the module or a TensorRT object (`_parse(trt, builder)`)."""
        if isinstance(value, (ast.Call, ast.Attribute)) and self._from_trt(value):
            return True
        return (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in self.helpers
                and any(self._from_trt(a) for a in value.args))

    def visit_Assign(self, node: ast.Assign) -> None:
        if self._makes_trt(node.value):
            for t in node.targets:
                for target in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if _key(target) is not None:
                        self.objects.add(_key(target))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain, base = [node.attr], node.value
        while isinstance(base, ast.Attribute) and not _is_module(base):
            chain.insert(0, base.attr)
            base = base.value
        if _is_module(base):
            self.module.add(".".join(chain))  # trt.ILogger.Severity.ERROR -> "ILogger.Severity.ERROR"
            return  # the chain's inner attributes are part of this one use
        if _key(node.value) in self.objects or (isinstance(node.value, ast.Call) and self._from_trt(node.value)):
            self.members.add(node.attr)
        self.generic_visit(node)


def _own_attributes(tree: ast.AST) -> set[str]:
    """Attributes our own subclasses of TensorRT classes set on themselves (the collecting logger's `errors`)."""
    own = set()
    for c in ast.walk(tree):
        if isinstance(c, ast.ClassDef) and any(isinstance(b, ast.Attribute) and _is_module(b.value) for b in c.bases):
            targets = [e for n in ast.walk(c) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                       for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                       for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            own |= {t.attr for t in targets if isinstance(t, ast.Attribute) and _key(t) is not None}
    return own


def uses(paths: list[Path] = USERS) -> tuple[set[str], set[str]]:
    """(module-level names and Class.member chains used on the tensorrt module, member names used on objects)."""
    module, members = set(), set()
    for path in paths:
        tree = ast.parse(path.read_text())
        if not any(isinstance(n, ast.Name) and n.id in _TRT_NAMES for n in ast.walk(tree)):
            continue  # never names the module: its `builder` or `parser` is something else (int8_plan's QdqBuilder)
        own = _own_attributes(tree)
        helpers = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        # a class is one scope (self.engine set in __init__ is used in infer), each other function its own
        in_class = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in ast.walk(c)}
        scopes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                  or (isinstance(n, ast.FunctionDef) and id(n) not in in_class)]
        for scope in scopes:
            v = _Uses(helpers)
            for _ in range(2):  # twice, so objects assigned later in a scope are known at their first use
                v.visit(scope)
            module |= v.module
            members |= v.members - own
    return module, members


def missing(api: set[str], module: set[str], members: set[str]) -> list[str]:
    """The uses `api` (a list's names) does not define. A module chain `A.B.C` needs A (a class or a module-level
    name) and each step: `A.B` a member of A, or B a nested class or enum; dunders (`__init__`) come with every class.
    A member used on an object needs some class to define it."""
    classes = {n for n in api if "." not in n}
    defined = {n.split(".", 1)[1] for n in api if "." in n and not n.startswith("<module>.")}
    out = []
    for use in module:
        parts = use.split(".")
        if parts[0] not in classes and f"<module>.{parts[0]}" not in api:
            out.append(f"trt.{use}")
            continue
        for a, b in zip(parts, parts[1:]):
            if not (b.startswith("__") or f"{a}.{b}" in api or b in classes):
                out.append(f"trt.{use}")
                break
    out += [f".{m}" for m in members if m not in defined and not m.startswith("__")]
    return sorted(set(out))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "extract":
        print("\n".join(sorted(extract_tree(Path(sys.argv[2])))))
    elif len(sys.argv) == 3 and sys.argv[1] == "extract-wheel":
        print(f"# TensorRT {sys.argv[2]} Python bindings (tensorrt-cu12-bindings=={sys.argv[2]}), read with "
              f"`python tests/tensorrt_api.py extract-wheel {sys.argv[2]}`")
        print("\n".join(sorted(extract_wheel(sys.argv[2]))))
    elif len(sys.argv) == 2 and sys.argv[1] == "uses":
        mod, mem = uses()
        print("\n".join([*(f"trt.{m}" for m in sorted(mod)), *(f".{m}" for m in sorted(mem))]))
    else:
        sys.exit(__doc__)
