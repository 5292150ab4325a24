"""Syntax-tree review of researcher model code against a policy's allowlists.

The model source must be one `nn.Module` subclass with `__init__` and
`forward`, written in a small safe subset of Python: arithmetic, control flow,
the allowed torch / nn / F names, tensor methods from an allowlist, and reads
of its own submodules. Anything else is a finding with a rule name and a line:
imports, unknown builtins (`getattr`, `eval`, `open`, ...), dunder attributes,
attribute chains into modules outside the allowlist (`torch.hub`,
`torch.serialization.os`, ...), file writers on tensors or arrays, writes to
parameters, buffers or class attributes outside `__init__`, `.data`/`.grad`,
`global`, in-place methods after construction, and reductions that would mix
samples of a batch. Pure `ast`: the code is never run here.

Review is bounded: a source nested deeper than `MAX_DEPTH` syntax-tree levels
(no model needs a tenth of that) is one finding and is not walked further, and
a source the parser itself cannot hold (Python's parser runs out of recursion
or memory on a few thousand nested operators) is a finding too, never an
exception that could stop the review of other requests.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from policies.contract.monai_nets import MONAI_NETS
from policies.contract.parsing import TooComplex, bounded_parse

SAFE_BUILTINS = frozenset({"range", "len", "int", "float", "bool", "min", "max", "abs", "sum",
                           "tuple", "list", "dict", "enumerate", "zip", "round", "isinstance"})
FORBIDDEN_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr", "eval", "exec",
                                "compile", "open", "globals", "vars", "locals", "__import__",
                                "input", "breakpoint", "memoryview", "type", "object", "print",
                                "id", "dir", "help", "exit", "quit"})
MODULE_ROOTS = frozenset({"torch", "nn", "F", "math", "monai"})
MATH_NAMES = frozenset({"sqrt", "pi", "log", "exp", "prod", "ceil", "floor", "e"})
TORCH_DTYPES = frozenset({"float32", "float", "float64", "long", "int64", "bool"})
TENSOR_ATTRS = frozenset({"shape", "ndim", "dtype", "device"})
TENSOR_METHODS = frozenset({
    "view", "reshape", "flatten", "mean", "sum", "amax", "amin", "max", "min", "relu",
    "sigmoid", "tanh", "softmax", "log_softmax", "exp", "log", "abs", "clamp", "pow", "sqrt",
    "add", "sub", "mul", "div", "matmul", "permute", "transpose", "unsqueeze", "squeeze", "size",
    "dim", "contiguous", "chunk", "split", "expand", "expand_as", "repeat", "float", "to",
    "type_as", "view_as", "reshape_as", "neg", "sign", "norm", "std", "var", "unbind", "narrow",
    "masked_fill", "clone", "detach", "numel",
})
MODULE_API_FORBIDDEN = frozenset({
    "state_dict", "load_state_dict", "apply", "parameters", "named_parameters", "buffers",
    "named_buffers", "modules", "named_modules", "children", "named_children", "cuda", "cpu",
    "train", "eval", "requires_grad_", "zero_grad", "share_memory", "register_parameter",
    "register_module", "add_module", "get_parameter", "get_buffer", "get_submodule",
})
# Tensor/array methods that leave the tensor world (files, raw memory, Python values, hooks).
ESCAPE_METHODS = frozenset({"numpy", "tofile", "tolist", "item", "storage", "untyped_storage",
                            "data_ptr", "as_strided", "register_hook", "retain_grad",
                            "backward", "pin_memory", "to_sparse", "save", "dump", "dumps"})
REDUCTIONS = frozenset({"mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod",
                        "norm", "logsumexp", "cumsum", "sort", "argsort", "topk", "median"})
INIT_ONLY = frozenset({"register_buffer"})
# nn.Module's own machinery a model must not redefine (what the site counts and trains).
MODULE_OVERRIDES_FORBIDDEN = MODULE_API_FORBIDDEN | frozenset({
    "_named_members", "_apply", "_call_impl", "_wrapped_call_impl", "_get_name",
    "_load_from_state_dict", "_save_to_state_dict", "register_buffer", "register_forward_hook",
    "register_forward_pre_hook", "register_full_backward_hook", "to", "half", "float",
    "double", "type", "extra_repr", "_replicate_for_data_parallel"})
@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    message: str


def _chain(node: ast.AST) -> list[str] | None:
    """['torch', 'serialization', 'os'] for torch.serialization.os; None if not a plain chain."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call, ast.Starred)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _is_super_init(node: ast.Attribute) -> bool:
    v = node.value
    return (node.attr == "__init__" and isinstance(v, ast.Call) and isinstance(v.func, ast.Name)
            and v.func.id == "super" and not v.args and not v.keywords)


def _int_const(node: ast.AST | None) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_const(node.operand)
        return -inner if inner is not None else None
    return None


class _MethodReview(ast.NodeVisitor):
    def __init__(self, func: ast.FunctionDef, layers: frozenset[str], functions: frozenset[str],
                 findings: list[Finding], monai_nets: frozenset[str] = frozenset()) -> None:
        self.func = func
        self.in_init = func.name == "__init__"
        self.layers = layers
        self.functions = functions
        self.monai_nets = monai_nets & MONAI_NETS
        self.out = findings
        self.locals = {a.arg for a in func.args.args + func.args.kwonlyargs}
        for extra in (func.args.vararg, func.args.kwarg):
            if extra is not None:
                self.locals.add(extra.arg)
        for node in ast.walk(func):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.locals.add(node.id)
            elif isinstance(node, ast.arg):
                self.locals.add(node.arg)

    def add(self, rule: str, node: ast.AST, message: str) -> None:
        self.out.append(Finding(rule, getattr(node, "lineno", self.func.lineno), message))

    # statements ---------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        self.add("model_code.import", node, "imports are not allowed")

    visit_ImportFrom = visit_Import  # type: ignore[assignment]

    def visit_Global(self, node: ast.Global) -> None:
        self.add("model_code.global", node, "global/nonlocal is not allowed")

    visit_Nonlocal = visit_Global  # type: ignore[assignment]

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node is not self.func:
            self.add("model_code.structure", node, "nested functions are not allowed")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.add("model_code.structure", node, "nested classes are not allowed")

    def _check_target(self, target: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._check_target(t)
            return
        if isinstance(target, (ast.Attribute, ast.Subscript)):
            root = _root(target)
            if isinstance(root, ast.Name) and root.id == "self" and not self.in_init:
                self.add("model_code.state_write", target,
                         "writes to the model's attributes, parameters or buffers are only "
                         "allowed in __init__")
            elif isinstance(root, ast.Name) and root.id in MODULE_ROOTS:
                self.add("model_code.state_write", target, f"writes into {root.id} are "
                         "not allowed")

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._check_target(t)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._check_target(t)
            if isinstance(t, ast.Name):
                pass
        self.generic_visit(node)

    # expressions ----------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load) or node.id in self.locals:
            return
        if node.id in MODULE_ROOTS or node.id in SAFE_BUILTINS or node.id == "self":
            return
        if node.id == "super":
            return  # only super().__init__() survives visit_Attribute / visit_Call
        rule = "model_code.builtin" if node.id in FORBIDDEN_BUILTINS or node.id.startswith(
            "__") else "model_code.name"
        self.add(rule, node, f"name {node.id!r} is not allowed")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr.startswith("__") and attr.endswith("__"):
            if not _is_super_init(node):
                self.add("model_code.dunder", node, f"dunder attribute {attr!r} is not allowed")
            self.generic_visit(node)
            return
        if attr in ("data", "grad"):
            self.add("model_code.data_grad", node, f".{attr} is not allowed")
        chain = _chain(node)
        if chain and chain[0] in MODULE_ROOTS and chain[0] not in self.locals:
            self._check_module_chain(node, chain)
            return
        self_chain = chain is not None and chain[0] == "self" and "self" not in (
            self.locals - {"self"})
        if self_chain and len(chain) == 2:  # self.<attr>: a submodule, parameter or buffer
            if attr.startswith("_"):
                self.add("model_code.private_attr", node, f"self.{attr} is not allowed")
            elif attr in MODULE_API_FORBIDDEN:
                self.add("model_code.module_api", node, f"self.{attr} is not allowed")
            elif attr in INIT_ONLY and not self.in_init:
                self.add("model_code.state_write", node, f"self.{attr} only in __init__")
        elif attr in MODULE_API_FORBIDDEN or attr.startswith("_"):
            self.add("model_code.module_api", node, f".{attr} is not allowed")
        elif attr in ESCAPE_METHODS:
            self.add("model_code.escape", node, f".{attr} leaves the tensor world "
                     "(files, memory or Python values)")
        elif attr.endswith("_") and not self.in_init:
            self.add("model_code.in_place", node,
                     f"in-place method .{attr}() is only allowed in __init__")
        elif not self_chain and attr not in TENSOR_METHODS | TENSOR_ATTRS | {"T"}:
            self.add("model_code.attribute", node, f"attribute .{attr} is not in the "
                     "tensor method allowlist")
        if attr == "T":
            self.add("model_code.batch_mixing", node, ".T swaps the batch dimension")
        self.generic_visit(node)

    def _check_module_chain(self, node: ast.Attribute, chain: list[str]) -> None:
        root, rest = chain[0], chain[1:]
        if root == "monai":  # MONAI's networks only, by their full name, as the policy allows
            if rest[:2] != ["networks", "nets"] or len(rest) != 3 or rest[2] not in MONAI_NETS:
                self.add("model_code.module_chain", node,
                         f"{'.'.join(chain)} is not one of MONAI's networks "
                         f"(monai.networks.nets: {', '.join(sorted(MONAI_NETS))})")
            elif rest[2] not in self.monai_nets:
                # a MONAI network builds layers the policy's `layers` list never sees, so
                # the data owner opts in by name (model_code.monai_nets)
                allowed = ", ".join(sorted(self.monai_nets)) or "none"
                self.add("model_code.monai", node,
                         f"{'.'.join(chain)} is not in the policy's MONAI networks "
                         f"(model_code.monai_nets: {allowed})")
            return
        if root == "torch" and rest[:2] == ["nn", "functional"]:
            root, rest = "F", rest[2:]
        elif root == "torch" and rest[:1] == ["nn"]:
            root, rest = "nn", rest[1:]
        if root == "nn" and rest[:1] == ["functional"]:
            root, rest = "F", rest[1:]
        if root == "nn" and rest[:1] == ["init"] and len(rest) == 2 and self.in_init:
            return
        allowed = {"nn": self.layers, "F": self.functions,
                   "torch": self.functions | TORCH_DTYPES, "math": MATH_NAMES}[root]
        if len(rest) != 1:
            self.add("model_code.module_chain", node,
                     f"{'.'.join(chain)} reaches outside the allowed torch names")
        elif rest[0] not in allowed:
            rule = "model_code.layer" if root == "nn" else "model_code.function"
            self.add(rule, node, f"{'.'.join(chain)} is not in the policy's allowlist")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "super":
            self.add("model_code.builtin", node, "super() only as super().__init__()")
            for a in node.args:
                self.visit(a)
            return
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call) \
                and _is_super_init(func):
            for a in node.args + [k.value for k in node.keywords]:
                self.visit(a)
            return
        if not self.in_init:
            self._check_batch_mixing(node)
        self.generic_visit(node)

    def _check_batch_mixing(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        chain = _chain(func) if isinstance(func, ast.Attribute) else None
        is_fn = bool(chain) and chain[0] in MODULE_ROOTS and chain[0] not in self.locals
        args = node.args[1:] if is_fn else node.args
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if name in REDUCTIONS:
            dim = kw.get("dim", args[0] if args else None)
            if dim is None:
                self.add("model_code.batch_mixing", node,
                         f"{name}() without dim reduces over the batch")
            elif _int_const(dim) == 0 or (isinstance(dim, (ast.Tuple, ast.List)) and any(
                    _int_const(e) == 0 for e in dim.elts)):
                self.add("model_code.batch_mixing", node, f"{name}(dim=0) mixes samples")
        elif name == "flatten":
            start = kw.get("start_dim", args[0] if args else None)
            if start is None or _int_const(start) == 0:
                self.add("model_code.batch_mixing", node,
                         "flatten() from dim 0 merges the batch; use flatten(1)")
        elif name in ("view", "reshape") and len(args) == 1 and _int_const(args[0]) == -1:
            self.add("model_code.batch_mixing", node, f"{name}(-1) merges the batch")
        elif name == "transpose" and any(_int_const(a) == 0 for a in args[:2]):
            self.add("model_code.batch_mixing", node, "transpose of dim 0 mixes samples")
        elif name == "permute" and args and _int_const(args[0]) not in (0, None):
            self.add("model_code.batch_mixing", node, "permute must keep dim 0 first")
        elif name in ("t", "mm", "cdist", "bmm"):
            self.add("model_code.batch_mixing", node, f"{name}() mixes samples")

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for a in node.args.args:
            self.locals.add(a.arg)
        self.generic_visit(node)


def review_model_code(source: str, class_name: str, layers: list[str] | frozenset[str],
                      functions: list[str] | frozenset[str],
                      monai_nets: list[str] | frozenset[str] = frozenset()) -> list[Finding]:
    """All findings for `source`; an empty list means the code is within the policy.
    `monai_nets`: the MONAI networks the policy allows (none unless it names them: what
    they build is not reviewed against `layers`, only as a traced graph)."""
    try:
        tree = bounded_parse(source)
    except SyntaxError as exc:
        return [Finding("model_code.syntax", exc.lineno or 0, f"does not parse: {exc.msg}")]
    except TooComplex as exc:
        return [Finding("model_code.depth", 1, f"the source is {exc}; it is not reviewed")]
    findings: list[Finding] = []
    layers_set, functions_set = frozenset(layers), frozenset(functions)
    classes = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes.append(node)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            continue  # module docstring
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            findings.append(Finding("model_code.import", node.lineno, "imports are not allowed"))
        else:
            findings.append(Finding("model_code.structure", node.lineno,
                                    "only class definitions are allowed at the top level"))
    target = [c for c in classes if c.name == class_name]
    if len(classes) != 1 or not target:
        findings.append(Finding("model_code.structure", 1,
                                f"expected exactly one class, named {class_name!r}"))
        if not target:
            return findings
    cls = target[0]
    if len(cls.bases) != 1 or _chain(cls.bases[0]) not in (["nn", "Module"],
                                                           ["torch", "nn", "Module"]) \
            or cls.keywords or cls.decorator_list:
        findings.append(Finding("model_code.structure", cls.lineno,
                                "the class must derive from nn.Module only, undecorated"))
    methods = {}
    for i, node in enumerate(cls.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # class docstring
        if isinstance(node, ast.FunctionDef):
            if node.decorator_list:
                findings.append(Finding("model_code.structure", node.lineno,
                                        "decorated methods are not allowed"))
            if node.name.startswith("__") and node.name != "__init__":
                findings.append(Finding("model_code.dunder", node.lineno,
                                        f"method {node.name} is not allowed"))
            elif node.name in MODULE_OVERRIDES_FORBIDDEN:
                findings.append(Finding("model_code.override", node.lineno,
                                        f"method {node.name} would redefine torch.nn.Module's "
                                        "own"))
            methods[node.name] = node
        else:
            findings.append(Finding("model_code.class_attribute", node.lineno,
                                    "class attributes are not allowed; define them in "
                                    "__init__"))
    for required in ("__init__", "forward"):
        if required not in methods:
            findings.append(Finding("model_code.structure", cls.lineno,
                                    f"the class needs a {required} method"))
    for method in methods.values():
        _MethodReview(method, layers_set, functions_set, findings,
                      frozenset(monai_nets)).visit(method)
    return sorted(set(findings), key=lambda f: (f.line, f.rule))
