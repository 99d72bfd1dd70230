"""Simplify a recorded ATen graph before it is compiled: fold constants, drop no-op nodes.

A Pyro program recorded with ``make_fx`` carries much that does not depend on its inputs: the
prior's scale raised to a power and logged, zero Jacobian terms summed, data reshaped, views and
expands to the shape a tensor already has. Each such node still costs a few microseconds per call
in TorchScript (and compile time under inductor), and for small models they outnumber the real
work. :func:`simplify` evaluates the graph once at example inputs, replaces every input-independent
value by a stored constant, short-circuits shape no-ops and arithmetic identities, and removes dead
nodes. A tensor that an in-place operation writes to (Pyro's distributions use ``masked_fill_``),
and every tensor it is a view of, is never folded or short-circuited.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.fx as fx

aten = torch.ops.aten

# Ops whose value depends only on their inputs' shapes (static in a recorded graph).
_SHAPE_ONLY = {aten.zeros_like.default, aten.ones_like.default, aten.full_like.default,
               aten.new_zeros.default, aten.new_ones.default, aten.new_full.default,
               aten.zeros.default, aten.ones.default, aten.full.default, aten.arange.default,
               aten.arange.start, aten.scalar_tensor.default}
# Ops that return their first input unchanged when the output has the input's shape.
_SAME_SHAPE_NOOPS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default,
                     aten.expand.default, aten.alias.default, aten.detach.default}


def _is_random(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in target.tags


def _is_mutating(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable


_VIEWS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default,
          aten.permute.default, aten.transpose.int, aten.t.default, aten.slice.Tensor, aten.select.int,
          aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.default, aten.alias.default,
          aten.detach.default, aten.as_strided.default, aten.diagonal.default}


def _written(gm: fx.GraphModule) -> set:
    """Nodes whose storage an in-place op writes: the ops' mutated arguments and the tensors they view."""
    out: set = set()
    for n in gm.graph.nodes:
        if n.op != "call_function" or not _is_mutating(n.target):
            continue
        out.add(n)
        for arg, spec in zip(n.args, n.target._schema.arguments):
            if isinstance(arg, fx.Node) and spec.alias_info is not None and spec.alias_info.is_write:
                stack = [arg]
                while stack:
                    m = stack.pop()
                    if m in out:
                        continue
                    out.add(m)
                    if m.op == "call_function" and m.target in _VIEWS and m.args and isinstance(m.args[0], fx.Node):
                        stack.append(m.args[0])
    return out


def _nodes_in(args: Any) -> list:
    found: list = []
    fx.node.map_arg(args, found.append)
    return found


def _values(gm: fx.GraphModule, example: tuple, keep: set) -> Dict[fx.Node, Any]:
    """Each node's value at the example inputs: kept in full for the nodes in ``keep`` (constants to
    fold), as a data-free meta tensor of the same shape and dtype for the others (a recorded graph
    over many chains has large intermediates, which the interpreter frees after their last use)."""
    values: Dict[fx.Node, Any] = {}

    class Record(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in keep or not isinstance(out, torch.Tensor):
                values[n] = out
            else:
                values[n] = torch.empty(out.shape, dtype=out.dtype, device="meta")
            return out

    Record(gm).run(*example)
    return values


def _constant_nodes(gm: fx.GraphModule, written: set) -> set:
    const: set = set()
    for n in gm.graph.nodes:
        if n in written:
            continue
        if n.op == "get_attr":
            const.add(n)
        elif n.op == "call_function" and not _is_random(n.target):
            if n.target in _SHAPE_ONLY or all(a in const for a in _nodes_in((n.args, n.kwargs))):
                const.add(n)
    return const


def _fold(gm: fx.GraphModule, values: Dict[fx.Node, Any], const: set) -> None:
    """Replace each constant value that a non-constant node (or the output) uses by one stored tensor.

    A constant that is an expand of a constant is stored unexpanded and expanded in the graph (a
    free view), so data broadcast over many chains is not stored once per chain.
    """
    graph = gm.graph
    for i, n in enumerate(list(const)):
        if n.op == "get_attr" or not isinstance(values.get(n), torch.Tensor):
            continue
        if all(u in const for u in n.users):
            continue  # only feeds other constants: dies with them
        value, shape = values[n], None
        src = n.args[0] if n.target == aten.expand.default else None
        if isinstance(src, fx.Node) and isinstance(values.get(src), torch.Tensor) and src in const:
            value, shape = values[src], list(n.args[1])
        name = f"_folded_{i}"
        gm.register_buffer(name, value.detach().clone())
        with graph.inserting_before(n):
            attr = graph.get_attr(name)
            values[attr] = value
            if shape is not None:
                attr = graph.call_function(aten.expand.default, (attr, shape))
                values[attr] = values[n]
        n.replace_all_uses_with(attr)


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype


def _constant_equal_to(gm: fx.GraphModule, node: Any, value: float) -> bool:
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return node == value
    if isinstance(node, fx.Node) and node.op == "get_attr":
        t = getattr(gm, node.target, None)
        return isinstance(t, torch.Tensor) and t.numel() > 0 and bool((t == value).all())
    return False


def _passthrough(gm: fx.GraphModule, n: fx.Node, values: Dict[fx.Node, Any]):
    """The input node ``n`` returns unchanged, if ``n`` is a no-op here, else None."""
    out = values.get(n)
    args = n.args
    first = args[0] if args else None
    if not isinstance(first, fx.Node) or not _same(values.get(first), out):
        return None
    if n.target in _SAME_SHAPE_NOOPS:
        return first
    if n.target == aten.permute.default and list(args[1]) == list(range(out.dim())):
        return first
    if n.target in (aten.add.Tensor, aten.sub.Tensor) and len(args) > 1 and _constant_equal_to(gm, args[1], 0.0) \
            and n.kwargs.get("alpha", 1) == 1:
        return first
    if n.target in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.pow.Tensor_Scalar) \
            and len(args) > 1 and _constant_equal_to(gm, args[1], 1.0) and not n.kwargs:
        return first
    if n.target == aten.add.Tensor and isinstance(args[1], fx.Node) and _same(values.get(args[1]), out) \
            and _constant_equal_to(gm, first, 0.0):
        return args[1]
    return None


def simplify(gm: fx.GraphModule, example: tuple) -> fx.GraphModule:
    """Fold constants and drop no-ops in ``gm`` (in place); ``example`` are inputs it runs at."""
    written = _written(gm)
    const = _constant_nodes(gm, written)
    values = _values(gm, example, const)
    _fold(gm, values, const)
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n not in written:
            keep = _passthrough(gm, n, values)
            if keep is not None and keep not in written:
                n.replace_all_uses_with(keep)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
