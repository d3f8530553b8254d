"""Storage activities: every write of a unit's data to PostgreSQL, each with its audit row.

Each activity runs in one transaction and is idempotent (keys from the workflow), so a
retry after a worker or database crash writes nothing twice.
"""

from __future__ import annotations

import json

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import talk_store
from activities.audit_log import Entry, log_event, recorded, write_audit
from activities.ballot_store import store_rater_groups
from activities.failpoints import failpoint
from schemas.messages import GroupEvaluation, RecordFollowUp, evaluation_text
from schemas.workflow_io import (
    AcknowledgementRecord,
    AuditRecord,
    FollowUpClosure,
    FollowUpRecord,
    FollowUpSpec,
    FollowUpsRecord,
    GradeDecisionRecord,
    GradeProposalRecord,
    ObjectionDecision,
    ObjectionRecord,
    PreviousGradesQuery,
    RegisterUnit,
    ReportRecord,
    TalkRecord,
    TransitionRecord,
    UnitRef,
)

TEAM_TARGET = ""  # grades.cadre_id of the team's own grade

_INSERT_FOLLOW_UP = """INSERT INTO follow_ups (workflow_id, follow_up_id, kind, cadre_id, owner,
                                               due_date, description)
                       VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"""


def _follow_up_row(ref: UnitRef, f: FollowUpSpec | RecordFollowUp) -> tuple[object, ...]:
    return (
        ref.workflow_id,
        f.follow_up_id,
        f.kind.value,
        f.cadre_id,
        f.owner,
        f.due_date,
        f.description,
    )


class StorageActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @activity.defn
    async def register_unit(self, rec: RegisterUnit) -> None:
        unit = rec.unit
        entry = Entry(
            "registered",
            "unit_registered",
            detail={
                "cadres": len(unit.cadres),
                "rater_groups": {g.group_id: g.planned for g in rec.rater_groups},
            },
        )
        async with recorded(
            self._pool, rec.ref, entry, "unit registered", cadres=len(unit.cadres)
        ) as conn:
            await conn.execute(
                """INSERT INTO campaigns (campaign_id, year, title, grade_labels)
                   VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (campaign_id) DO NOTHING""",
                rec.ref.campaign_id,
                rec.year,
                rec.campaign_title,
                json.dumps(rec.grade_labels, ensure_ascii=False),
            )
            await conn.execute(
                """INSERT INTO units (workflow_id, campaign_id, unit_id, name, category, stage)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workflow_id) DO NOTHING""",
                rec.ref.workflow_id,
                rec.ref.campaign_id,
                unit.unit_id,
                unit.name,
                unit.category,
                rec.ref.stage.value,
            )
            await conn.executemany(
                """INSERT INTO cadres
                       (workflow_id, cadre_id, name, position, principal, newly_promoted)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
                [
                    (
                        rec.ref.workflow_id,
                        c.cadre_id,
                        c.name,
                        c.position,
                        c.principal,
                        c.newly_promoted,
                    )
                    for c in unit.cadres
                ],
            )
            await store_rater_groups(conn, rec.ref.workflow_id, rec.rater_groups)

    @activity.defn
    async def record_transition(self, rec: TransitionRecord) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            new = await write_audit(
                conn,
                rec.ref,
                f"transition:{rec.seq}",
                "transition",
                rec.actor,
                {
                    "from": rec.from_stage.value if rec.from_stage else None,
                    "to": rec.to_stage.value,
                    "reason": rec.reason,
                },
            )
            if new:
                await conn.execute(
                    "UPDATE units SET stage = $2, updated_at = now() WHERE workflow_id = $1",
                    rec.ref.workflow_id,
                    rec.to_stage.value,
                )
        log_event(rec.ref, "stage transition", to=rec.to_stage.value, seq=rec.seq)

    @activity.defn
    async def append_audit(self, rec: AuditRecord) -> None:
        async with self._pool.acquire() as conn:
            await write_audit(conn, rec.ref, rec.event_key, rec.kind, rec.actor, rec.detail)
        log_event(rec.ref, "audit", kind=rec.kind)

    @activity.defn
    async def save_acknowledgement(self, rec: AcknowledgementRecord) -> None:
        a = rec.action
        entry = Entry(f"ack:{a.idempotency_key}", "notice_acknowledged", a.actor)
        async with recorded(self._pool, rec.ref, entry, "notice acknowledged") as conn:
            await conn.execute(
                """INSERT INTO acknowledgements (workflow_id, idempotency_key, actor_id, note)
                   VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
                rec.ref.workflow_id,
                a.idempotency_key,
                a.actor.id,
                a.note,
            )

    @activity.defn
    async def save_report(self, rec: ReportRecord) -> None:
        a = rec.action
        f = a.file
        entry = Entry(
            f"report:{a.idempotency_key}",
            "report_submitted",
            a.actor,
            {
                "kind": a.kind,
                "cadre_id": a.cadre_id,
                "revision": rec.revision,
                "chars": len(a.text) if a.text else None,
                "file_sha256": f.sha256 if f else None,
            },
        )
        fields = {"kind": a.kind, "cadre": a.cadre_id, "revision": rec.revision}
        async with recorded(self._pool, rec.ref, entry, "report stored", **fields) as conn:
            await conn.execute(
                """INSERT INTO reports (workflow_id, idempotency_key, kind, cadre_id, revision,
                                        revision_reason, title, body, submitted_by, file_uri,
                                        file_sha256, file_size, file_media_type)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                   ON CONFLICT DO NOTHING""",
                rec.ref.workflow_id,
                a.idempotency_key,
                a.kind,
                a.cadre_id,
                rec.revision,
                a.revision_reason,
                a.title,
                a.text,
                a.actor.id,
                f.uri if f else None,
                f.sha256 if f else None,
                f.size if f else None,
                f.media_type if f else None,
            )

    @activity.defn
    async def accept_talk(self, rec: TalkRecord) -> str | None:
        """A talk stored by kaohe's API, counted by the unit: why its reference is refused, or
        None once it is recorded (activities/talk_store.py). No content comes in."""
        return await talk_store.accept_talk(self._pool, rec)

    @activity.defn
    async def save_grade_proposal(self, rec: GradeProposalRecord) -> None:
        a = rec.action
        appraisal = None
        if isinstance(a.evaluation, GroupEvaluation):
            appraisal = a.evaluation.model_dump_json()
        # The audit row says a proposal exists, never its grades: they are sealed.
        no = rec.proposal_no
        entry = Entry(f"proposal:{no}", "grades_proposed", a.actor, {"proposal_no": no})
        async with recorded(
            self._pool, rec.ref, entry, "grade proposal stored", proposal_no=no
        ) as conn:
            await conn.execute(
                """INSERT INTO grade_proposals (workflow_id, proposal_no, proposer_id, evaluation,
                                                team_grade, cadre_grades, determinations,
                                                appraisal)
                   VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb)
                   ON CONFLICT DO NOTHING""",
                rec.ref.workflow_id,
                rec.proposal_no,
                a.actor.id,
                evaluation_text(a.evaluation),
                a.team_grade.value,
                json.dumps({k: v.value for k, v in a.cadre_grades.items()}, ensure_ascii=False),
                json.dumps(a.determinations, ensure_ascii=False),
                appraisal,
            )

    @activity.defn
    async def save_grade_decision(self, rec: GradeDecisionRecord) -> None:
        a = rec.action
        no = rec.proposal_no
        entry = Entry(
            f"decision:{no}",
            f"grades_{a.decision}d",
            a.actor,
            {"proposal_no": no, "comment": a.comment},
        )
        fields = {"proposal_no": no, "decision": a.decision}
        async with recorded(self._pool, rec.ref, entry, "grade decision stored", **fields) as conn:
            proposal = await conn.fetchrow(
                """UPDATE grade_proposals
                   SET decision = $3, decided_by = $4, comment = $5, decided_at = now()
                   WHERE workflow_id = $1 AND proposal_no = $2
                   RETURNING team_grade, cadre_grades""",
                rec.ref.workflow_id,
                rec.proposal_no,
                a.decision,
                a.actor.id,
                a.comment,
            )
            if proposal is None:
                raise ApplicationError(f"proposal {rec.proposal_no} is not stored")
            if a.decision == "approve":
                unit = await conn.fetchrow(
                    "SELECT u.unit_id, c.year FROM units u JOIN campaigns c USING (campaign_id) "
                    "WHERE u.workflow_id = $1",
                    rec.ref.workflow_id,
                )
                assert unit is not None
                grades = {
                    TEAM_TARGET: proposal["team_grade"],
                    **json.loads(proposal["cadre_grades"]),
                }
                await conn.executemany(
                    """INSERT INTO grades (workflow_id, year, unit_id, cadre_id, grade, final,
                                           final_at)
                       VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 THEN now() END)
                       ON CONFLICT (workflow_id, cadre_id) DO UPDATE
                       SET grade = EXCLUDED.grade, final = EXCLUDED.final,
                           final_at = EXCLUDED.final_at""",
                    [
                        (
                            rec.ref.workflow_id,
                            unit["year"],
                            unit["unit_id"],
                            cadre,
                            grade,
                            not rec.publicity,
                        )
                        for cadre, grade in grades.items()
                    ],
                )

    @activity.defn
    async def previous_grades(self, q: PreviousGradesQuery) -> dict[str, str]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT cadre_id, grade FROM grades "
                "WHERE year = $1 AND final AND cadre_id = ANY($2::text[])",
                q.year,
                q.cadre_ids,
            )
        return {r["cadre_id"]: r["grade"] for r in rows}

    @activity.defn
    async def finalize_grades(self, ref: UnitRef) -> None:
        """Publicity ended with no open objection: the published grades become final."""
        entry = Entry("grades_final", "grades_final")
        async with recorded(self._pool, ref, entry, "grades final") as conn:
            await conn.execute(
                "UPDATE grades SET final = true, final_at = now() "
                "WHERE workflow_id = $1 AND NOT final",
                ref.workflow_id,
            )

    @activity.defn
    async def save_objection(self, rec: ObjectionRecord) -> None:
        a = rec.action
        entry = Entry(
            f"objection:{a.objection_id}",
            "objection_raised",
            a.actor,
            {"objection_id": a.objection_id, "cadre_id": a.cadre_id},
        )
        fields = {"objection_id": a.objection_id}
        async with recorded(self._pool, rec.ref, entry, "objection raised", **fields) as conn:
            await conn.execute(
                """INSERT INTO objections (workflow_id, objection_id, raised_by, cadre_id, reason)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
                rec.ref.workflow_id,
                a.objection_id,
                a.raised_by,
                a.cadre_id,
                a.reason,
            )

    @activity.defn
    async def resolve_objection(self, rec: ObjectionDecision) -> None:
        a = rec.action
        entry = Entry(
            f"objection_resolved:{a.objection_id}",
            f"objection_{a.decision}",
            a.actor,
            {"objection_id": a.objection_id, "decision": a.decision},
        )
        fields = {"objection_id": a.objection_id, "decision": a.decision}
        async with recorded(self._pool, rec.ref, entry, "objection resolved", **fields) as conn:
            await conn.execute(
                """UPDATE objections SET decision = $3, decision_reason = $4, decided_by = $5,
                          decided_at = now()
                   WHERE workflow_id = $1 AND objection_id = $2 AND decision IS NULL""",
                rec.ref.workflow_id,
                a.objection_id,
                a.decision,
                a.reason,
                a.actor.id,
            )
            if a.decision == "uphold":
                # The published grades are withdrawn; a new approval publishes new ones.
                await conn.execute(
                    "DELETE FROM grades WHERE workflow_id = $1 AND NOT final", rec.ref.workflow_id
                )

    @activity.defn
    async def create_follow_ups(self, rec: FollowUpsRecord) -> None:
        entry = Entry(
            "follow_ups:derived",
            "follow_ups_created",
            detail={"follow_ups": [f.follow_up_id for f in rec.follow_ups]},
        )
        fields = {"count": len(rec.follow_ups)}
        async with recorded(self._pool, rec.ref, entry, "follow-ups created", **fields) as conn:
            await conn.executemany(
                _INSERT_FOLLOW_UP, [_follow_up_row(rec.ref, f) for f in rec.follow_ups]
            )
        failpoint("create_follow_ups:committed")

    @activity.defn
    async def save_follow_up(self, rec: FollowUpRecord) -> None:
        a = rec.action
        entry = Entry(
            f"follow_up:{a.follow_up_id}",
            "follow_up_recorded",
            a.actor,
            {"follow_up_id": a.follow_up_id, "kind": a.kind.value},
        )
        fields = {"follow_up_id": a.follow_up_id}
        async with recorded(self._pool, rec.ref, entry, "follow-up recorded", **fields) as conn:
            await conn.execute(_INSERT_FOLLOW_UP, *_follow_up_row(rec.ref, a))

    @activity.defn
    async def close_follow_up(self, rec: FollowUpClosure) -> None:
        a = rec.action
        entry = Entry(
            f"follow_up_closed:{a.follow_up_id}",
            "follow_up_closed",
            a.actor,
            {"follow_up_id": a.follow_up_id},
        )
        fields = {"follow_up_id": a.follow_up_id}
        async with recorded(self._pool, rec.ref, entry, "follow-up closed", **fields) as conn:
            await conn.execute(
                """UPDATE follow_ups SET outcome = $3, closed_at = now(), closed_by = $4
                   WHERE workflow_id = $1 AND follow_up_id = $2 AND closed_at IS NULL""",
                rec.ref.workflow_id,
                a.follow_up_id,
                a.outcome,
                a.actor.id,
            )

    @activity.defn
    async def load_unit_stages(self, campaign_id: str) -> dict[str, str]:
        """unit_id -> stage, for a campaign restarted over units that already run."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT unit_id, stage FROM units WHERE campaign_id = $1", campaign_id
            )
        return {r["unit_id"]: r["stage"] for r in rows}
