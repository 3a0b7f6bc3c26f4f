"""`--filters` expressions, parsed into column/operator/values and turned into bound SQL.

One expression per filter; several filters are ANDed. Forms:

    k=v    k=a,b (IN)    k!=v    k!=a,b (NOT IN)    k>=v  k<=v  k>v  k<v
    k is null    k is not null    k between a and b

A column whose name has spaces or other signs goes in double quotes, as in SQL:
`"field name"=a`, `"plot-id" is null`; letters of any script need none (`Höhe>=2`).
A value may be quoted ('a,b' or "a,b") to keep commas. Values are never spliced into SQL: they
are converted to the column's Python type and sent as bound parameters, so
`state=NC' OR 1=1 --` looks for a state literally named `NC' OR 1=1 --`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from components.core.errors import SegloopError

# A column: a plain name (letters of any script, digits, _) or any name in double quotes, as in
# SQL ("field name", "plot-id"; "" inside stands for one "). Names are checked against the table.
NAME = r'"(?:[^"]|"")+"|[^\W\d]\w*'
NULL_RE = re.compile(rf"^\s*({NAME})\s+is\s+(not\s+)?null\s*$", re.IGNORECASE)
BETWEEN_RE = re.compile(rf"^\s*({NAME})\s+between\s+(.+?)\s+and\s+(.+?)\s*$", re.IGNORECASE)
COMPARE_RE = re.compile(rf"^\s*({NAME})\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$", re.DOTALL)
FORMS = (
    "k=v, k=a,b, k!=v, k>=v, k<=v, k>v, k<v, 'k is null', 'k is not null', 'k between a and b'; "
    "put a column name with spaces or other signs in double quotes: '\"field name\"=v'"
)
TRUE_WORDS = {"true", "1", "yes", "y", "t"}
FALSE_WORDS = {"false", "0", "no", "n", "f"}


@dataclass(frozen=True)
class Filter:
    raw: str
    column: str
    op: str  # = != > >= < <= in not_in is_null is_not_null between
    values: tuple[Any, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["values"] = list(self.values)
        return data


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _split_list(text: str) -> list[str]:
    """`a,b,'c,d'` -> ['a', 'b', 'c,d'] (quotes keep commas); a single quoted value stays whole."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        inner = stripped[1:-1]
        if stripped[0] not in inner:
            return [inner]
    parts = re.findall(r"""\s*('[^']*'|"[^"]*"|[^,]*)\s*(?:,|$)""", text)
    values = [_unquote(p) for p in parts]
    # findall yields one trailing empty match at the end of the string.
    if len(values) > 1 and values[-1] == "" and not text.rstrip().endswith(","):
        values = values[:-1]
    return values


def _column(name: str) -> str:
    """A column name as written in a filter: `"field name"` -> `field name`."""
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name


def parse_filter(text: str) -> Filter:
    """Parse one filter expression (columns are checked later, against the table)."""
    if not isinstance(text, str) or not text.strip():
        raise SegloopError(f"empty filter {text!r}; forms: {FORMS}")
    if m := NULL_RE.match(text):
        return Filter(text, _column(m.group(1)), "is_not_null" if m.group(2) else "is_null")
    if m := BETWEEN_RE.match(text):
        values = (_unquote(m.group(2)), _unquote(m.group(3)))
        return Filter(text, _column(m.group(1)), "between", values)
    if m := COMPARE_RE.match(text):
        column, op, value = m.groups()
        column = _column(column)
        if op in ("=", "!="):
            values = _split_list(value)
            if len(values) > 1:
                return Filter(text, column, "in" if op == "=" else "not_in", tuple(values))
            return Filter(text, column, op, (values[0],))
        return Filter(text, column, op, (_unquote(value),))
    raise SegloopError(f"cannot parse filter {text!r}; forms: {FORMS}")


def check_columns(names: list[str], table: sa.Table, what: str) -> None:
    """Every name must be a column of `table`; the error lists the valid ones."""
    unknown = [n for n in names if n not in table.c]
    if unknown:
        raise SegloopError(
            f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"in {what}; columns of table '{table.name}': {', '.join(table.c.keys())}"
        )


def _python_type(column: sa.Column) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def convert(value: Any, column: sa.Column, raw: str) -> Any:
    """A filter value as the column's Python type (so comparisons are numeric where they should)."""
    kind = _python_type(column)
    if not isinstance(value, str) or kind in (None, str):
        return value
    try:
        if kind is bool:
            word = value.strip().lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            raise ValueError(value)
        if kind is int:
            number = int(value)
            if not -(2**63) <= number < 2**63:
                raise SegloopError(
                    f"filter {raw!r}: {value} is out of range for column '{column.name}' "
                    f"({column.type}: a database integer is a 64-bit number)"
                )
            return number
        if kind is float:
            return float(value)
    except ValueError:
        raise SegloopError(
            f"filter {raw!r}: {value!r} is not a valid {kind.__name__} for column "
            f"'{column.name}' ({column.type})"
        ) from None
    return value


def to_clause(flt: Filter, table: sa.Table) -> sa.ColumnElement[bool]:
    """The filter as a SQLAlchemy expression with bound parameters."""
    check_columns([flt.column], table, f"filter {flt.raw!r}")
    col = table.c[flt.column]
    vals = [convert(v, col, flt.raw) for v in flt.values]
    match flt.op:
        case "is_null":
            return col.is_(None)
        case "is_not_null":
            return col.is_not(None)
        case "in":
            return col.in_(vals)
        case "not_in":
            return col.not_in(vals)
        case "between":
            return col.between(vals[0], vals[1])
        case "=":
            return col == vals[0]
        case "!=":
            return col != vals[0]
        case ">":
            return col > vals[0]
        case ">=":
            return col >= vals[0]
        case "<":
            return col < vals[0]
        case "<=":
            return col <= vals[0]
    raise SegloopError(f"filter {flt.raw!r}: unsupported operator {flt.op!r}")


def where(filters: list[Filter], table: sa.Table) -> sa.ColumnElement[bool]:
    return sa.and_(sa.true(), *(to_clause(f, table) for f in filters))
