"""Message templates, unique by title within a project."""

from __future__ import annotations

from typing import Any

import peewee as pw

from flask_polysms.ports.store import Conflict, NotFound
from flask_polysms.records import Template

from .statements import StatementRunner, _record, _values


class TemplateRecords(StatementRunner):
    """The store's templates."""

    # -- templates --------------------------------------------------------------------------------
    def create_template(self, template: Template) -> Template:
        """Raises Conflict when the project has a template with this title (or the id is taken)."""
        try:
            self._insert(self._m.Template, _values(template))
        except pw.IntegrityError as exc:
            raise Conflict(f"a template titled {template.title!r} exists") from exc
        return self._roundtrip(self._m.Template, Template, template)

    def get_template(self, project_id: str, template_id: str) -> Template | None:
        """The project's template with this id, None when unknown (or another project's)."""
        T_ = self._m.Template
        row = self._first(T_.select().where((T_.id == template_id) & (T_.project_id == project_id)))
        return _record(Template, row) if row else None

    def get_template_by_title(self, project_id: str, title: str) -> Template | None:
        """The project's template with this title, None when there is none."""
        T_ = self._m.Template
        row = self._first(T_.select().where((T_.project_id == project_id) & (T_.title == title)))
        return _record(Template, row) if row else None

    def list_templates(self, project_id: str) -> list[Template]:
        """A project's templates ordered by title."""
        T_ = self._m.Template
        query = T_.select().where(T_.project_id == project_id).order_by(T_.title)
        return [_record(Template, row) for row in query.dicts()]

    def update_template(self, project_id: str, template_id: str, **fields: Any) -> Template:
        """Raises NotFound, or Conflict when a new title is taken. ``id`` and ``project_id`` are
        not settable (TypeError): a template never moves to another project."""
        T_ = self._m.Template
        changes = self._changes(T_, Template, fields, frozen=("id", "project_id"))
        mine = (T_.id == template_id) & (T_.project_id == project_id)

        def work() -> dict[str, Any] | None:
            if changes and not T_.update(changes).where(mine).execute():
                return None
            return self._first(T_.select().where(mine))

        try:
            row = self._atomically(work)
        except pw.IntegrityError as exc:
            raise Conflict(f"a template titled {fields.get('title')!r} exists") from exc
        if row is None:
            raise NotFound(f"no template {template_id}")
        return _record(Template, row)

    def delete_template(self, project_id: str, template_id: str) -> bool:
        """Delete the project's template; False when it had none with this id."""
        T_ = self._m.Template
        query = T_.delete().where((T_.id == template_id) & (T_.project_id == project_id))
        return self._atomically(query.execute, one_statement=True) > 0
