"""Every Redis key and channel the fleet uses, in one place, under one namespace prefix.

Celery's own keys (queues, the unacked index, kombu's bindings, pidbox replies, event channels) live under
`<namespace>:celery:`, the broker transport's global key prefix (worker.app), so two fleets on one Redis share
nothing: every key and pub/sub channel of a fleet matches `<namespace>:*`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# letters, digits, `_`, `.` and `-`: no `:` (one namespace can never be a prefix of another's keys), no glob
# characters (Redis ACL and SCAN patterns), no `/` or `..` (the file store's folder is named after it)
NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAMESPACE_HEADER = "litemedsam_namespace"  # Celery message header: the namespace the producer sent it in
NAMESPACE_CONF = "litemedsam_namespace"  # Celery app setting: the namespace whose messages its workers run


def check_namespace(namespace: str) -> str:
    """`namespace` if it is usable as a key prefix; a ValueError saying why not otherwise."""
    if not isinstance(namespace, str) or not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} (LITEMEDSAM_NAMESPACE): use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return namespace


@dataclass(frozen=True)
class Keys:
    namespace: str = "lms"

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # Celery / kombu
    @property
    def broker_prefix(self) -> str:
        """The broker transport's `global_keyprefix`: queue `q` is the Redis list `<ns>:celery:q`."""
        return self._key("celery", "")

    def queue(self, name: str) -> str:
        """The Redis list holding the messages waiting in queue `name`."""
        return self.broker_prefix + name

    def acl_rules(self, db: int = 0) -> list[str]:
        """Redis ACL rules confining a user to this namespace on database `db`:
        `ACL SETUSER <user> on ><password> <rules...>` (or `user <user> on ><password> <rules...>` in an ACL file).

        Keys and channels: `<ns>:*`. Kombu also PSUBSCRIBEs to the pidbox and event channels, and Redis matches a
        PSUBSCRIBE pattern literally against the allowed ones, so those patterns are listed as they are sent
        (workers: pidbox and `worker.*` events; Flower and `celery events`: every event). Commands: all but the
        dangerous ones (KEYS, FLUSHALL, CONFIG, MONITOR, ...) and those that list names outside the user's keys
        and channels (SCAN, RANDOMKEY, PUBSUB).
        """
        events = f"{self.broker_prefix}/{db}.celeryev/"
        return [
            "resetkeys",
            f"~{self.namespace}:*",
            "resetchannels",
            f"&{self.namespace}:*",
            f"&{self.broker_prefix}/{db}.celery.pidbox",
            f"&{events}worker.*",
            f"&{events}*",
            "+@all",
            "-@dangerous",
            "-scan",
            "-randomkey",
            "-pubsub",
        ]

    def misrouted(self) -> str:
        """List of task messages a worker of this namespace refused and could not hand to their owner."""
        return self._key("misrouted")

    # blob names in the store (which puts them under the namespace: `<ns>:blob:<name>` or `<root>/<ns>/<name>`)
    @staticmethod
    def input_blob(image_digest: str) -> str:
        return f"input/{image_digest}"

    @staticmethod
    def result_blob(result_key: str) -> str:
        return f"result/{result_key}"

    @staticmethod
    def embedding_blob(space: str, view: str, index: int) -> str:
        """One slice's embedding, encoded by a part of a split study (worker.embedding_store); `space` names the
        study content, model, encoder precision and interpolation, so it is what any worker would compute."""
        return f"embedding/{space}/{view}/{int(index)}"

    @staticmethod
    def view_blob(run: str, view: str) -> str:
        """One tri-view view's labels of a split PET study (worker.parts)."""
        return f"view/{run}/{view}"

    # split studies (worker.fanout): `space` is content-addressed (shared by identical studies), `run` is one
    # coordinator's delivery
    def slice_claim(self, space: str, view: str, index: int) -> str:
        """SET NX with a TTL: who encodes this slice now (the lease of that piece of work)."""
        return self._key("split", space, "claim", view, str(int(index)))

    def split_state(self, run: str) -> str:
        """Hash: the coordinator's position per view (`cursor:<view>`), `finished`, views' `progress:<view>`."""
        return self._key("split", run, "state")

    def split_parts(self, run: str) -> str:
        """Hash: part index -> its report (node, seconds, slices encoded, state), for the study's metrics."""
        return self._key("split", run, "parts")

    def split_part_runs(self, run: str) -> str:
        """Hash: part index -> deliveries started (a part whose worker keeps dying is abandoned)."""
        return self._key("split", run, "runs")

    def view_claim(self, run: str, view: str) -> str:
        return self._key("split", run, "view", view)

    def views_landed(self, run: str) -> str:
        """Set of the tri-view views whose labels are stored."""
        return self._key("split", run, "landed")

    def vote_claim(self, run: str) -> str:
        return self._key("split", run, "vote")

    def split_run_keys(self, run: str) -> tuple[str, ...]:
        return (
            self.split_state(run),
            self.split_parts(run),
            self.split_part_runs(run),
            self.views_landed(run),
            self.vote_claim(run),
        )

    def forced(self, task_id: str) -> str:
        """Marks that a forced recomputation already replaced its result (a duplicate delivery must not again)."""
        return self._key("forced", task_id)

    # batches
    def batch_meta(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "meta")

    def batch_studies(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "studies")

    def batch_outcomes(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "outcomes")

    def batch_progress(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "progress")

    def batch_runs(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "runs")

    def batch_channel(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "events")

    def batch_parts(self, batch_id: str) -> tuple[str, ...]:
        return (
            self.batch_meta(batch_id),
            self.batch_studies(batch_id),
            self.batch_outcomes(batch_id),
            self.batch_progress(batch_id),
            self.batch_runs(batch_id),
        )

    # interactive sessions on the fleet (worker.sessions, producer.fleet_sessions)
    def session_nodes(self) -> str:
        """Sorted set: worker node -> the last time (epoch seconds) it said it was alive (every second)."""
        return self._key("session", "nodes")

    def session_reply(self, request_id: str) -> str:
        """List: the one reply (worker.contract.sessions.SessionReply bytes) to a session step."""
        return self._key("session", "reply", request_id)

    def session_busy(self, request_id: str) -> str:
        """A key with a short TTL that the worker running a session step keeps alive while it runs."""
        return self._key("session", "busy", request_id)

    def session_closed(self) -> str:
        """Sorted set: session id -> when its gateway closed it (epoch seconds); workers drop what they hold of a
        session found here (worker.sessions.CloseWatcher), the gateway trims entries older than a day."""
        return self._key("session", "closed")

    # fleet-wide
    def identities(self, queue: str) -> str:
        return self._key("identities", queue)

    def executions(self) -> str:
        """Hash: worker node name -> number of engine runs (a study actually segmented)."""
        return self._key("executions")
