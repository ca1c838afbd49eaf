"""Read-only SQL on results.db (`reproduce.py query`): one statement that cannot write, on any backend.

Three guards, each enough on its own for the cases it covers, so that no single bypass writes:

1. Up front, on the text: exactly one statement (quotes, comments and PostgreSQL dollar quotes
   are understood), and it must start with a reading keyword (SELECT, WITH, VALUES, TABLE,
   EXPLAIN, SHOW, PRAGMA). VACUUM, ATTACH, DETACH, BEGIN/COMMIT/ROLLBACK, DML and DDL stop here.
2. The connection: SQLite is opened with `mode=ro` and an authorizer that allows only reads
   (tables, functions, recursive CTEs and a list of reading PRAGMAs without assignment; ATTACH,
   which VACUUM INTO also needs, is denied). PostgreSQL sessions start with
   `default_transaction_read_only=on`, so even a transaction begun after a COMMIT is read-only.
3. The protocol: on PostgreSQL (psycopg) the statement is sent as a prepared statement, and the
   server itself refuses a string with two commands in it ("COMMIT; DELETE ..." never runs).

Where untrusted people query a shared server, also give them a role that can only SELECT: a
superuser's read-only transaction still runs functions such as `lo_export` that write files.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError

from .store import BUSY_TIMEOUT_S, StoreError, _engine, describe_db_error, display_url, parse_url, sqlite_path

READ_KEYWORDS = ("select", "with", "values", "table", "explain", "show", "pragma")
# PRAGMAs that only report; those in PRAGMA_WITH_ARG may name a table or index, the rest take no value
READ_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "foreign_key_check", "integrity_check", "quick_check", "database_list", "collation_list", "function_list",
    "module_list", "pragma_list", "compile_options", "user_version", "schema_version", "application_id",
    "page_count", "page_size", "freelist_count", "journal_mode", "encoding", "data_version", "foreign_keys",
})
PRAGMA_WITH_ARG = frozenset({"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                             "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check"})
DENIED_FUNCTIONS = frozenset({"load_extension"})
_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


class ReadOnlyError(StoreError):
    """The SQL would write (or is not one reading statement): refused, nothing ran."""


class QueryError(StoreError):
    """The SQL is a read but the database rejected it (a typo, an unknown column)."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool  # more than max_rows rows matched


def statements(sql: str) -> list[str]:
    """The statements in `sql`, split at semicolons outside quotes and comments (empty ones dropped)."""
    out, start, i, n = [], 0, 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            j = sql.find(ch, i + 1)
            while j != -1 and sql[j + 1:j + 2] == ch:  # '' inside a string is an escaped quote
                j = sql.find(ch, j + 2)
            i = n if j == -1 else j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j == -1 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j == -1 else j + 2
        elif ch == "$" and (m := re.match(r"\$[A-Za-z_]*\$", sql[i:])):  # PostgreSQL $tag$ ... $tag$
            j = sql.find(m.group(0), i + len(m.group(0)))
            i = n if j == -1 else j + len(m.group(0))
        elif ch == ";":
            out.append(sql[start:i])
            start = i = i + 1
        else:
            i += 1
    out.append(sql[start:])
    return [s for s in out if _strip_comments(s).strip()]


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.S)


def first_keyword(sql: str) -> str:
    words = re.findall(r"[A-Za-z_]+", _strip_comments(sql).lstrip(" \t\r\n("))
    return words[0].lower() if words else ""


def check_readonly_sql(sql: str) -> str:
    """The one reading statement in `sql`, or ReadOnlyError saying why it is refused."""
    found = statements(sql)
    if len(found) != 1:
        raise ReadOnlyError(f"query runs exactly one read-only statement; got {len(found)}")
    keyword = first_keyword(found[0])
    if keyword not in READ_KEYWORDS:
        raise ReadOnlyError(f"query is read-only: {keyword.upper() or 'this statement'} is refused "
                            f"(allowed: {', '.join(k.upper() for k in READ_KEYWORDS)})")
    return found[0]


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    """sqlite3 authorizer: reads pass, everything else (writes, ATTACH, transactions, DDL) is denied."""
    if action == sqlite3.SQLITE_FUNCTION and arg2 in DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 in READ_PRAGMAS and (arg2 is None or arg1 in PRAGMA_WITH_ARG):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def readonly_query(db: str | os.PathLike | None, sql: str, max_rows: int = 200) -> QueryResult:
    """Run one reading statement; ReadOnlyError if it could write, QueryError if the database rejects it."""
    statement = check_readonly_sql(sql)
    url = parse_url(db)
    path = sqlite_path(url)
    if url.get_backend_name() == "sqlite":
        if path is None or not path.is_file():
            raise StoreError(f"no database at {display_url(url)} (check --db; reading commands never create one)")
        return _sqlite_query(path, statement, max_rows)
    return _server_query(url, statement, max_rows)


def _sqlite_query(path, statement: str, max_rows: int) -> QueryResult:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        conn.set_authorizer(_authorize)
        cur = conn.execute(statement)
        return _fetch(cur, max_rows)
    except sqlite3.Error as e:
        raise _explain(e, statement) from None
    finally:
        conn.rollback()
        conn.close()


def _server_query(url, statement: str, max_rows: int) -> QueryResult:
    engine = _engine(url, readonly=True)
    driver_error = engine.dialect.loaded_dbapi.Error
    try:
        try:
            conn = engine.connect()
        except DBAPIError as e:
            raise StoreError(describe_db_error(e, url)) from None
        with conn:
            if url.get_driver_name() == "psycopg":  # prepared: the server refuses a second command
                cur = conn.connection.driver_connection.cursor()
                cur.execute(statement, prepare=True)
                return _fetch(cur, max_rows)
            if engine.dialect.name != "postgresql":  # no session default there: this transaction at least
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            return _fetch(conn.exec_driver_sql(statement).cursor, max_rows)
    except DBAPIError as e:
        raise _explain(e.orig, statement) from None
    except driver_error as e:  # the raw psycopg cursor's errors are not wrapped by SQLAlchemy
        raise _explain(e, statement) from None
    finally:
        engine.dispose()


def _fetch(cur, max_rows: int) -> QueryResult:
    if cur.description is None:
        raise ReadOnlyError("query is read-only: the statement returned no rows")
    rows = cur.fetchmany(max_rows + 1)
    return QueryResult([d[0] for d in cur.description], [tuple(r) for r in rows[:max_rows]], len(rows) > max_rows)


def _explain(e: BaseException, statement: str) -> StoreError:
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
    low = msg.lower()
    if "authoriz" in low or "read-only" in low or "readonly" in low or "read only" in low:
        return ReadOnlyError(f"query is read-only; refused: {msg}")
    if "multiple commands" in low or "one statement at a time" in low:
        return ReadOnlyError("query runs exactly one read-only statement; refused: " + msg)
    return QueryError(f"SQL error: {msg}")
