"""Text → syntax tree, with Lark's LALR parser; Lark's errors become ours, with a caret.

The tree is built while parsing (Lark's inline transformer), so deep nesting never recurses
in Python; sums and products are kept flat, and nesting deeper than ``MAX_DEPTH`` is refused.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from lark import Lark, Transformer
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from .errors import EinderivError, EinderivSyntaxError
from .functions import USER_FUNCTIONS

__all__ = ["parse_text", "Node", "Stmt", "split_tensor", "MAX_DEPTH"]

MAX_DEPTH = 200
MAX_NAME = 64
DELTA_NAMES = ("delta", "δ")
RESERVED = set(USER_FUNCTIONS) | {"sum", "size", *DELTA_NAMES}


@dataclass(frozen=True, slots=True)
class Node:
    """A syntax-tree node: kind in {num, tensor, delta, call, sum, add, mul, neg, pow, group}."""
    kind: str
    value: object          # number, (name, indices), function name, summed indices ...
    children: tuple        # child nodes; for add/mul: tuple of (op, node)
    line: int
    column: int
    depth: int


@dataclass(frozen=True, slots=True)
class Stmt:
    name: str
    indices: tuple[str, ...]
    rhs: Node
    line: int
    column: int


def _grammar_text() -> str:
    try:
        from importlib.resources import files
        return files("einderiv.grammar").joinpath("einderiv.lark").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, TypeError):
        here = Path(__file__).resolve().parent.parent / "grammar" / "einderiv.lark"
        return here.read_text(encoding="utf-8")


_IDENT = re.compile(r"[^\W\d_][^\W_]*\Z")
_LETTERS = re.compile(r"[^\W\d_]+\Z")


class _Fail(Exception):
    """A semantic error found while building the tree; carries the token for the caret."""

    def __init__(self, message, token, offset=0):
        super().__init__(message)
        self.message = message
        self.token = token
        self.offset = offset        # characters from the token's start to the culprit


_TRANSPOSE_HINT = "there is no transpose mark; swap the indices instead: Aᵀ_ij is A_ji"


def _script_character(text: str, token) -> None:
    """Refuse Unicode sub- and superscripts (``x₁``, ``xᵢ``, ``x²``, ``Aᵀ``): Python reads
    them as letters or digits, so they would silently become part of a name or an index."""
    if text.isascii():
        return
    for at, ch in enumerate(text):
        if ch.isascii():
            continue
        uname = unicodedata.name(ch, "")
        if ch == "\u1d40":       # ᵀ MODIFIER LETTER CAPITAL T
            raise _Fail(f"'{text}': {_TRANSPOSE_HINT}", token, at)
        if "SUBSCRIPT" in uname:
            raise _Fail(f"'{text}': '{ch}' is a Unicode subscript; write indices as letters "
                        "after '_', like x_i or A_ij", token, at)
        if "SUPERSCRIPT" in uname:
            raise _Fail(f"'{text}': '{ch}' is a Unicode superscript; write a power with '^', "
                        "like x_i^2", token, at)


def split_tensor(text: str, token=None) -> tuple[str, tuple[str, ...]]:
    """``"A_ij"`` → ``("A", ("i", "j"))``; ``"W_{out,in}"`` → ``("W", ("out", "in"))``."""
    _script_character(text, token)
    name, _, spec = text.partition("_")
    if len(name) > MAX_NAME:
        raise _Fail(f"name '{name[:20]}...' is longer than {MAX_NAME} characters", token)
    if not _IDENT.match(name):
        raise _Fail(f"'{name}' is not a valid name", token)
    if not _:
        return name, ()
    if spec.startswith("{"):
        if not spec.endswith("}"):
            raise _Fail(f"the '{{' in '{text}' is not closed", token)
        inner = spec[1:-1].strip()
        if not inner:
            raise _Fail(f"empty index list in '{text}'", token)
        if "," in inner:
            parts = tuple(p.strip() for p in inner.split(","))
            if len(parts) > 1 and parts[-1] == "":
                parts = parts[:-1]  # y_{out,}: one multi-letter index
            for p in parts:
                if not _IDENT.match(p) or len(p) > MAX_NAME:
                    raise _Fail(f"'{p}' is not a valid index name in '{text}'", token)
            return name, parts
        if not _LETTERS.match(inner):
            raise _Fail(f"indices must be letters: '{text}'", token)
        return name, tuple(inner)
    return name, tuple(spec)


def _depth(*children):
    d = 0
    for c in children:
        if isinstance(c, Node):
            d = max(d, c.depth)
    return d + 1


def _check(node_depth, token):
    if node_depth > MAX_DEPTH:
        raise _Fail(f"the formula nests deeper than {MAX_DEPTH} levels", token)


# functions users reach for that are not elementwise, or not spelled einderiv's way
_NOT_FUNCTIONS = {
    "tr": "a trace is a repeated index: tr(A) is A_ii, tr(AXB) is A_ij X_jk B_ki",
    "det": "determinants and inverses are not index formulas, so einderiv has no rule for "
           "them (by hand: d log det X = tr(X⁻¹ dX))",
    "softmax": "write it out: exp(z_i) / sum_j(exp(z_j))",
    "norm": "write it out: sqrt(sum_i(x_i^2))",
    "mean": "write it out: sum_i(x_i) / size(x,0)",
    "max": "there is no max or min; relu(x) is max(x, 0)",
    "sum": "a sum names its indices: sum_j( ... )",
    "ln": "the natural logarithm is log",
    "transpose": _TRANSPOSE_HINT,
    "dot": "a product is written A_ij B_jk (the shared index j is summed)",
}
_NOT_FUNCTIONS.update({"trace": _NOT_FUNCTIONS["tr"], "logdet": _NOT_FUNCTIONS["det"],
                       "inv": _NOT_FUNCTIONS["det"], "inverse": _NOT_FUNCTIONS["det"],
                       "min": _NOT_FUNCTIONS["max"], "matmul": _NOT_FUNCTIONS["dot"],
                       "T": _NOT_FUNCTIONS["transpose"]})


def _unknown_function(name: str) -> str:
    """The message for ``name(``: what to write instead, or the nearest function's name."""
    message = f"unknown function '{name}'"
    hint = _NOT_FUNCTIONS.get(name) or _NOT_FUNCTIONS.get(name.lower())
    if hint:
        return f"{message}: {hint}"
    folded = name.lower()       # Exp, tahn: the case or two letters' order is the typo
    close = ([f for f in USER_FUNCTIONS if sorted(f) == sorted(folded)]
             or difflib.get_close_matches(folded, USER_FUNCTIONS, n=1))
    if close:
        message += f" (did you mean '{close[0]}'?)"
    return f"{message}; the functions are: {' '.join(USER_FUNCTIONS)}"


# a hint per character that users type for an operator einderiv writes otherwise
_CHARACTER_HINTS = {
    **dict.fromkeys("·⋅∙×@⊙∘", "write a product with a space, A_ij B_jk, or with '*'"),
    "'": _TRANSPOSE_HINT,
    "[": "indices follow '_': A_ij, not A[i,j]",
    "}": "a '}' without its '{'",
    ",": "statements are separated by ';' or a new line; named indices go in braces, W_{out,in}",
    **dict.fromkeys("−–—", "a minus is written '-'"),
    "÷": "a division is written '/'",
    "\ufeff": "a byte-order mark: save the file as UTF-8 without BOM",
}


def _character_message(text: str, pos: int) -> str:
    """What to say about the character at ``pos`` that no token starts with."""
    ch = text[pos] if pos < len(text) else ""
    what = repr(ch) if ch.isprintable() and not ch.isspace() else f"{ch!r} ({_unicode_name(ch)})"
    rest = text[pos:].split("\n", 1)[0]
    if rest.startswith("_{") and "}" not in rest:
        return "the '{' of this index list is not closed"
    hint = _CHARACTER_HINTS.get(ch)
    return f"unexpected character {what}" + (f" ({hint})" if hint else "")


class _Build(Transformer):
    """Inline callbacks of the LALR parser: tokens → Node."""

    def number(self, children):
        (tok,) = children
        shown = tok if len(tok) <= 30 else f"{tok[:12]}...{tok[-12:]}"
        try:
            digits = str(tok)
            value = Fraction(int(digits) if digits.isascii() and digits.isdigit() else digits)
            float(value)
        except OverflowError:
            raise _Fail(f"the number {shown} is too large for float64", tok) from None
        except ValueError:  # more digits than Python converts (4300)
            raise _Fail(f"the number {shown} has {len(tok)} characters; write it with an "
                        "exponent, like 1e300", tok) from None
        return Node("num", value, (), tok.line, tok.column, 1)

    def tensor(self, children):
        (tok,) = children
        name, indices = split_tensor(str(tok), tok)
        if name in DELTA_NAMES:
            if len(indices) != 2:
                raise _Fail(f"a Kronecker delta takes two indices, got '{tok}'", tok)
            return Node("delta", indices, (), tok.line, tok.column, 1)
        if name == "sum":
            raise _Fail(f"'{tok}' needs parentheses around what it sums: {tok}( ... ) "
                        "('sum' is a reserved word)", tok)
        if name in RESERVED:
            raise _Fail(f"'{name}' is a reserved word and cannot name a tensor", tok)
        return Node("tensor", (name, indices), (), tok.line, tok.column, 1)

    def size(self, children):
        (tok,) = children
        name, axis = str(tok)[5:-1].split(",")
        return Node("size", (name.strip(), int(axis)), (), tok.line, tok.column, 1)

    def group(self, children):
        (inner,) = children
        if inner.kind == "add":  # keep (a + b) one term of an enclosing sum
            return Node("group", None, (inner,), inner.line, inner.column, inner.depth + 1)
        return inner

    def call(self, children):
        tok, arg = children
        name = str(tok)[:-1]
        if name not in USER_FUNCTIONS:
            raise _Fail(_unknown_function(name), tok)
        d = _depth(arg)
        _check(d, tok)
        return Node("call", name, (arg,), tok.line, tok.column, d)

    def sum(self, children):
        tok, arg = children
        _, indices = split_tensor(str(tok)[:-1].rstrip(), tok)
        d = _depth(arg)
        _check(d, tok)
        return Node("sum", indices, (arg,), tok.line, tok.column, d)

    def add(self, children):
        left, op, right = children
        if left.kind == "add":
            items = left.children + ((str(op), right),)
            return Node("add", None, items, left.line, left.column, max(left.depth, _depth(right)))
        d = _depth(left, right)
        _check(d, op)
        return Node("add", None, (("+", left), (str(op), right)), left.line, left.column, d)

    def neg(self, children):
        op, inner = children
        d = _depth(inner)
        _check(d, op)
        return Node("neg", None, (inner,), op.line, op.column, d)

    def mul(self, children):
        if len(children) == 2:
            left, right = children
            op = "*"
            tok = None
        else:
            left, tok, right = children
            op = str(tok)
        if left.kind == "mul":
            items = left.children + ((op, right),)
            return Node("mul", None, items, left.line, left.column, max(left.depth, _depth(right)))
        d = _depth(left, right)
        _check(d, tok or right)
        return Node("mul", None, (("*", left), (op, right)), left.line, left.column, d)

    def pow(self, children):
        base, exponent = children
        d = _depth(base, exponent)
        _check(d, base)
        return Node("pow", None, (base, exponent), base.line, base.column, d)

    def statement(self, children):
        tok, rhs = children
        name, indices = split_tensor(str(tok), tok)
        if name in RESERVED:
            raise _Fail(f"'{name}' is a reserved word and cannot be defined", tok)
        return Stmt(name, indices, rhs, tok.line, tok.column)

    def start(self, children):
        return [c for c in children if isinstance(c, Stmt)]


_ENDS_OPERAND = {"NUMBER", "TENSOR", "SIZE", "RPAR"}           # x_i2, 1..2, (x)2
_STARTS_OPERAND = {"NUMBER", "TENSOR", "SIZE", "CALL", "SUM", "LPAR"}  # 2x_i, 2sin(x), 2(x)


class _Spacing:
    """Post-lexer: a number may not touch a neighbouring operand (SPEC §1: juxtaposition
    needs a space), so ``x_i2``, ``2x_i``, ``1..2`` and ``1.5.5`` are errors, not products."""

    always_accept = ()

    def process(self, stream):
        previous = None
        for token in stream:
            if (previous is not None and previous.end_pos == token.start_pos
                    and "NUMBER" in (previous.type, token.type)
                    and previous.type in _ENDS_OPERAND and token.type in _STARTS_OPERAND):
                raise _Fail(f"'{token}' directly after '{previous}': a number must be separated "
                            "from its neighbour by a space or '*'", token)
            previous = token
            yield token


_PARSER = None


def _parser() -> Lark:
    global _PARSER
    if _PARSER is None:
        _PARSER = Lark(_grammar_text(), parser="lalr", transformer=_Build(),
                       postlex=_Spacing(), propagate_positions=False, maybe_placeholders=False)
    return _PARSER


def _caret(text: str, line: int, column: int) -> str:
    lines = text.splitlines() or [""]
    if not 1 <= line <= len(lines):
        line = len(lines)
        column = len(lines[-1]) + 1
    src = lines[line - 1]
    shown = "".join(ch if ch.isprintable() else "?" for ch in src)
    start = max(0, column - 60)
    return f"  {shown[start:start + 120]}\n  {' ' * (column - 1 - start)}^"


def _unicode_name(ch: str) -> str:
    """``'\xa0'`` → ``U+00A0 NO-BREAK SPACE``."""
    name = unicodedata.name(ch, "") or ("a control character" if unicodedata.category(ch) == "Cc" else "")
    return f"U+{ord(ch):04X} {name}".rstrip()


def _describe(token) -> str:
    if token is None:
        return "the end of the formula"
    if getattr(token, "type", "") == "$END":
        return "the end of the formula"
    return f"'{token}'"


def syntax_error(text, message, line, column) -> EinderivSyntaxError:
    return EinderivSyntaxError(f"line {line}, column {column}: {message}\n{_caret(text, line, column)}",
                               line, column)


def parse_text(text: str) -> list[Stmt]:
    """Parse a program into statements; every failure is an EinderivSyntaxError."""
    if not isinstance(text, str):
        raise EinderivError(f"a formula must be a string, got {type(text).__name__}")
    try:
        statements = _parser().parse(text)
    except _Fail as fail:
        tok = fail.token
        line = getattr(tok, "line", 1) or 1
        column = (getattr(tok, "column", 1) or 1) + fail.offset
        raise syntax_error(text, fail.message, line, column) from None
    except VisitError as err:  # pragma: no cover - inline transformers raise _Fail directly
        raise EinderivError(str(err.orig_exc)) from None
    except UnexpectedCharacters as err:
        raise syntax_error(text, _character_message(text, err.pos_in_stream), err.line,
                           err.column) from None
    except UnexpectedToken as err:
        tok = err.token
        if tok.type == "$END":
            lines = text.splitlines() or [""]
            line, column = len(lines), len(lines[-1]) + 1
            message = "the formula ends too early (an unclosed '(' or a missing operand?)"
        else:
            line, column = tok.line, tok.column
            message = f"unexpected {_describe(tok)}"
            if str(tok) == "=":
                message += " (one '=' per statement; a statement is  name_indices = expression)"
            elif str(tok) == ")":
                message += " (unbalanced parentheses?)"
            elif str(tok) == "*" and text[tok.start_pos - 1:tok.start_pos] == "*":
                message += " (a power is written with '^', like x_i^2)"
            elif str(tok) in "+-" and text[:tok.start_pos].rstrip().endswith("^"):
                message += " (a signed exponent goes in parentheses, like x^(-2))"
        raise syntax_error(text, message, line, column) from None
    except UnexpectedEOF:
        lines = text.splitlines() or [""]
        raise syntax_error(text, "the formula ends too early", len(lines), len(lines[-1]) + 1) from None
    except UnexpectedInput as err:  # pragma: no cover
        raise syntax_error(text, "syntax error", getattr(err, "line", 1), getattr(err, "column", 1)) from None
    except (LarkError, RecursionError) as err:
        raise EinderivError(f"cannot parse the formula: {err}") from None
    if not statements:
        raise EinderivError("the formula is empty: write a statement like  C_ik = A_ij B_jk")
    return statements
