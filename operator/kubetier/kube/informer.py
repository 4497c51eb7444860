"""List once, then watch: an in-memory cache of one kind that stays current.

``Informer.run`` lists the objects (selected by namespace and labels), then watches
from the list's resourceVersion; when the watch ends (the server closes it after
``watch_timeout_s``) it resumes from the last version seen, and when that version is
gone (HTTP 410) it lists again and reports what changed in between. Each change calls
the ``on_change`` callbacks with (event type, old object or None, new object or None),
so a controller reacts to a child changing at once instead of at its next resync.

Costs per informer at steady state: one long-lived watch request per
``watch_timeout_s`` (default 300 s) and no list; the apiserver sends bookmarks so a
resumed watch rarely needs a re-list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from kubetier.kube.client import KubeClient, KubeError, WatchExpired

log = logging.getLogger("kubetier.kube.informer")

Key = tuple[str, str]  # (namespace or "", name)
ChangeCallback = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]


def object_key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Informer:
    def __init__(
        self,
        api: KubeClient,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        *,
        index_label: str | None = None,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
    ) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.index_label = index_label
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        self.synced = asyncio.Event()
        self.relists = 0  # lists after the first (410 Gone or errors): for tests and benchmarks
        self._store: dict[Key, dict[str, Any]] = {}
        # (namespace, value of index_label) -> keys: a controller's children without a scan.
        self._index: dict[Key, set[Key]] = {}
        self._callbacks: list[ChangeCallback] = []
        self._version = ""

    def __repr__(self) -> str:
        where = self.namespace or "all namespaces"
        return f"Informer({self.kind} in {where}, selector={self.label_selector!r})"

    # ------------------------------------------------------------------ reading the cache

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._store.get((namespace or "", name))

    def items(self) -> list[dict[str, Any]]:
        return list(self._store.values())

    def indexed(self, namespace: str, value: str) -> list[dict[str, Any]]:
        """Objects in ``namespace`` whose ``index_label`` equals ``value``."""
        return [self._store[k] for k in sorted(self._index.get((namespace, value), ()))]

    def __len__(self) -> int:
        return len(self._store)

    def remember(self, obj: dict[str, Any]) -> None:
        """Store an object this process just wrote (the API's response), ahead of its
        watch event; an older version never replaces a newer one."""
        key = object_key(obj)
        before = self._store.get(key)
        if before is None or not _older(obj, before):
            self._put(key, obj)

    # ------------------------------------------------------------------ keeping it current

    async def run(self) -> None:
        """Forever: list, watch, resume; re-list on 410 Gone or after an error."""
        first = not self.synced.is_set()
        backoff = self.retry_s
        while True:
            try:
                await self._list(notify=not first)
                first = False
                backoff = self.retry_s
                self.synced.set()
                while True:
                    async for event in self.api.watch(
                        self.kind,
                        self.namespace,
                        self.label_selector,
                        resource_version=self._version,
                        timeout_s=self.watch_timeout_s,
                    ):
                        self._apply_event(event.type, event.object)
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                log.info("%r: resourceVersion %s expired, listing again", self, self._version)
            except KubeError as exc:
                if exc.status in (401, 403):
                    raise  # credentials or RBAC: retrying will not help; say so
                log.warning("%r: %s; listing again in %.0f s", self, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("%r: %s; listing again in %.0f s", self, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            self.relists += 1

    async def _list(self, notify: bool) -> None:
        items, version = await self.api.list_versioned(self.kind, self.namespace, self.label_selector)
        fresh = {object_key(o): o for o in items}
        old = self._store
        self._store, self._index = {}, {}
        for key, obj in fresh.items():
            self._put(key, obj)
        self._version = version
        if notify:
            for key in old.keys() - fresh.keys():
                self._notify("DELETED", old[key], None)
            for key, obj in fresh.items():
                before = old.get(key)
                if before is None:
                    self._notify("ADDED", None, obj)
                elif _version_of(before) != _version_of(obj):
                    self._notify("MODIFIED", before, obj)
        else:
            for obj in fresh.values():
                self._notify("ADDED", None, obj)

    def _apply_event(self, type_: str, obj: dict[str, Any]) -> None:
        version = _version_of(obj)
        if version:
            self._version = version
        if type_ == "BOOKMARK":
            return
        key = object_key(obj)
        before = self._store.get(key)
        if type_ == "DELETED":
            self._drop(key)
            self._notify("DELETED", before, None)
        elif before is not None and _older(obj, before):
            return  # we already hold a newer version (remembered from our own write)
        else:
            self._put(key, obj)
            self._notify("MODIFIED" if before is not None else "ADDED", before, obj)

    def _put(self, key: Key, obj: dict[str, Any]) -> None:
        self._drop(key)
        self._store[key] = obj
        value = self._index_value(obj)
        if value is not None:
            self._index.setdefault((key[0], value), set()).add(key)

    def _drop(self, key: Key) -> None:
        old = self._store.pop(key, None)
        if old is None:
            return
        value = self._index_value(old)
        if value is not None:
            keys = self._index.get((key[0], value))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[(key[0], value)]

    def _index_value(self, obj: dict[str, Any]) -> str | None:
        if self.index_label is None:
            return None
        value = ((obj.get("metadata") or {}).get("labels") or {}).get(self.index_label)
        return None if value is None else str(value)

    def _notify(self, type_: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for callback in self._callbacks:
            try:
                callback(type_, old, new)
            except Exception:  # one bad callback must not stop the cache
                log.exception("%r: change callback failed", self)


def _version_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _older(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether ``a`` is an older version of the object than ``b``. resourceVersions are
    opaque in the API contract; etcd-backed servers issue increasing integers, which is
    the only case compared here (anything else counts as not older)."""
    va, vb = _version_of(a), _version_of(b)
    return va.isdigit() and vb.isdigit() and int(va) < int(vb)


async def wait_synced(informers: Iterable[Informer], timeout_s: float | None = None) -> None:
    await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in informers)), timeout_s)
