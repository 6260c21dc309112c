"""infra/init-db.sql read as the consumer sees its tables (enough of SQL for that file), for the tests that
check the project's files against each other. (tests/ is on sys.path: its conftest.)"""

from __future__ import annotations

import re
from pathlib import Path

from consumer.mapping import PgTable

INIT_DB_SQL = Path(__file__).resolve().parent.parent / "infra" / "init-db.sql"


def parse_pg(text: str) -> dict[str, PgTable]:
    """The CREATE TABLEs and REPLICA IDENTITY settings of infra/init-db.sql (enough of SQL for that file)."""
    text = re.sub(r"--[^\n]*", "", text)
    full = set(re.findall(r"ALTER\s+TABLE\s+(\w+)\s+REPLICA\s+IDENTITY\s+FULL", text, flags=re.I))
    tables = {}
    for m in re.finditer(
        r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\((.*?)\);", text, flags=re.I | re.S
    ):
        name, body = m.group(1), m.group(2)
        columns: dict[str, str] = {}
        pk: tuple[str, ...] = ()
        for item in _split(body):
            if item.upper().startswith("PRIMARY KEY"):
                pk = tuple(c.strip() for c in item[item.index("(") + 1 : item.rindex(")")].split(","))
                continue
            col, rest = item.split(None, 1)
            type_text = re.split(
                r"\s+(?:NOT|NULL|PRIMARY|CHECK|DEFAULT|UNIQUE|REFERENCES)\b", rest, maxsplit=1
            )[0]
            columns[col] = type_text.strip()
            if re.search(r"\bPRIMARY\s+KEY\b", rest, flags=re.I):
                pk = (col,)
        tables[name] = PgTable(name, columns, pk, "full" if name in full else "default")
    return tables


def _split(body: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            items.append(body[start:i].strip())
            start = i + 1
    items.append(body[start:].strip())
    return [s for s in items if s]
