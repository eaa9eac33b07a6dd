"""One open session per (project, user number, agent number), and the agent-turn claim:
``open_mark``, ``turn_owner`` and ``turn_until`` on ``<prefix>session`` and the unique index
``<prefix>session_one_open``.

``open_mark`` is 1 on the session inbound messages join (the newest one not closed) and NULL on
every other; the unique index over the triple and the mark lets two first messages at once open
one session (NULL marks never clash). A database may hold several open sessions of one triple: a
newer outbound session supersedes an older one, which stays open until its deadline and then
closes quietly. Only the newest gets the mark, so the index can be added over such rows, and the
older ones keep running out as before.
"""

from __future__ import annotations

import peewee as pw

from flask_polysms.backends.peewee_migrations import frozen, table_prefix

INDEX = "session_one_open"
COLUMNS = ("open_mark", "turn_owner", "turn_until")


def model(db: pw.Database) -> type[pw.Model]:
    """A frozen model of the session table: the columns this script reads or adds."""
    c = frozen.Columns(db)
    Base = frozen.base_model(db)

    class Session(Base):
        seq = pw.BigIntegerField()
        project_id = c.key()
        user_number = c.key()
        agent_number = c.key()
        state = c.key(32)
        open_mark = pw.SmallIntegerField(null=True)
        turn_owner = c.opt_key(64)
        turn_until = c.datetime(null=True)

        class Meta:
            table_name = table_prefix() + "session"
            primary_key = False

    return Session


def up(migrator, db: pw.Database) -> None:
    """Add the columns, mark the newest open session of each triple, then add the index."""
    session = model(db)
    table = session._meta.table_name
    migrator.migrate(
        *(migrator.add_column(table, name, getattr(session, name)) for name in COLUMNS)
    )
    q = db.quote

    def name(identifier: str) -> str:
        return q[0] + identifier + q[1]

    # The newest session not closed per triple. MySQL refuses a subquery on the table being
    # updated unless it is materialised in a derived table: hence the second SELECT.
    triple = f"{name('project_id')}, {name('user_number')}, {name('agent_number')}"
    db.execute_sql(
        f"UPDATE {name(table)} SET {name('open_mark')} = 1 WHERE {name('seq')} IN ("
        f"SELECT newest FROM (SELECT MAX({name('seq')}) AS newest FROM {name(table)} "
        f"WHERE {name('state')} <> {db.param} GROUP BY {triple}) AS n)",
        ("closed",),
    )
    db.execute(
        pw.ModelIndex(
            session,
            (session.project_id, session.user_number, session.agent_number, session.open_mark),
            unique=True,
            safe=False,
            name=table_prefix() + INDEX,
        )
    )


def down(migrator, db: pw.Database) -> None:
    """Drop the index and the columns."""
    table = model(db)._meta.table_name
    migrator.migrate(
        migrator.drop_index(table, table_prefix() + INDEX),
        *(migrator.drop_column(table, name) for name in COLUMNS),
    )
