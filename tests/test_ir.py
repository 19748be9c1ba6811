"""The IR nodes: immutable, and equal nodes hash and compare equal, also across processes."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from einderiv.ir import Tensor

ROOT = Path(__file__).resolve().parent.parent

_PICKLE = """
import pickle, sys
import einderiv as ed
from einderiv.ir import Tensor
node = Tensor("A", ("i", "j"), ("A.0", "A.1"))
hash(node)                                       # cached in the node before pickling
d = ed.diff(sys.argv[1], wrt=sys.argv[2])
sys.stdout.buffer.write(pickle.dumps((node, d)))
"""

_LOAD = """
import pickle, sys
import einderiv as ed
from einderiv.ir import Tensor
node, d = pickle.loads(sys.stdin.buffer.read())
fresh_node = Tensor("A", ("i", "j"), ("A.0", "A.1"))
fresh = ed.diff(sys.argv[1], wrt=sys.argv[2])
print(node == fresh_node, hash(node) == hash(fresh_node))
print(all(a.expr == b.expr for a, b in zip(d.statements, fresh.statements)))
print(repr(str(ed.diff(d, wrt=sys.argv[3]))))
print(repr(str(ed.diff(fresh, wrt=sys.argv[3]))))
"""


def _run(code, seed, args, stdin=None):
    env = dict(os.environ, PYTHONHASHSEED=str(seed), PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True,
                         env=env, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    return run.stdout


def test_a_node_pickled_in_another_process_equals_the_same_node_built_here():
    """Nodes cache their hash; a str hashes differently in each process (PYTHONHASHSEED), so
    a node hashed, pickled and loaded elsewhere kept a stale hash, compared unequal to the same
    node built there, and a Derivative differentiated again after pickling printed another
    form: 2 sum_i(W_ip W_iq (1 - h_i (2 h_i + x_i) - h_i^2) (1 - h_i^2)) + ... for
    2 sum_i(W_ip W_iq (-h_i (1 - h_i^2) (2 h_i + x_i) + (1 - h_i^2)^2)) + ..."""
    formula = "h_i = tanh(sum_j(W_ij x_j)); L = sum_i(h_i h_i) + h_k x_k"
    pickled = _run(_PICKLE, 1, [formula, "x_p"])
    same_node, same_statements, again, fresh = _run(
        _LOAD, 2, [formula, "x_p", "x_q"], stdin=pickled).decode().strip().split("\n")
    assert same_node == "True True"
    assert same_statements == "True"
    assert again == fresh


def test_nodes_are_frozen():
    node = Tensor("A", ("i",), ("A.0",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.name = "B"
