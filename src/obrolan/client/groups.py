"""Group chats on this device: signed state, Megolm messages, moderation, reports.

The server knows nothing of groups. A group's state is the chain of signed
updates this device verified (``crypto.group_state``); every change is signed
by its actor's account key, sent end to end over Olm to every member device,
and checked here before it counts. A group message is signed by the sending
device, encrypted once with this device's Megolm session for the group and
uploaded once for all member devices (``send_multi``). The Megolm session is
replaced when a member leaves or is removed, and after a number of messages or
an age (:attr:`Groups.rotation`, default 100 messages or 7 days), so a removed
member reads nothing sent after.

Group events that arrive over Olm are stashed in the inbox transaction and
applied afterwards (:meth:`Groups.process_inbox`), because checking them may
need the actors' account keys from the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import msgspec

from obrolan.client.conversation import Conversations
from obrolan.client.group_host import GroupHost
from obrolan.client.group_messages import GroupMessages
from obrolan.client.group_reports import GroupReports
from obrolan.client.group_store import GroupStore, Report, group_peer
from obrolan.client.group_watch import GroupWatch
from obrolan.client.ids import new_id
from obrolan.client.models import Event, Message
from obrolan.client.store import Store, now_ms
from obrolan.crypto.account import AccountKey
from obrolan.crypto.group_state import (
    GroupView,
    UpdateRejected,
    apply_update,
    can_post,
    describe,
    new_group_id,
    peek,
    sign_update,
    update_hash,
)
from obrolan.crypto.signatures import verify
from obrolan.errors import (
    ObrolanError,
    RemoteProtocolError,
    ServerUnreachable,
    SignatureError,
)
from obrolan.protocol import content, groups
from obrolan.protocol.frames import Envelope
from obrolan.protocol.signing import group_update_bytes

__all__ = ["GroupError", "GroupHost", "Groups", "invite_link"]

log = logging.getLogger("obrolan.client")

ROTATE_MESSAGES = 100
"""By default a sending device starts a new Megolm session after this many messages…"""
ROTATE_DAYS = 7
"""…or once its session is this many days old."""
_ROTATION = "group_rotation"
"""Meta key: "MESSAGES DAYS", this device's rotation setting."""
_MADE = "group_made:"
"""Meta key prefix: updates this device signed (it alone makes one again if displaced)."""
_OWN_INVITE = "own_invite:"
"""Meta key prefix: invites this device made (it alone approves joins at once)."""


class GroupError(ObrolanError):
    """A group action that cannot be done: unknown group, missing role, bad invite."""


def invite_link(group_id: str, invite_id: str, inviter: str) -> str:
    """What a person shares to invite others: it names the group and whom to ask."""
    return f"obrolan://join?group={group_id}&invite={invite_id}&from={inviter}"


class Groups:
    """This device's groups: their verified state, sessions and messages."""

    def __init__(
        self,
        store: Store,
        host: GroupHost,
        account: AccountKey,
        pickle_key: bytes,
        conversations: Conversations,
        emit: Callable[[Event], None],
    ) -> None:
        self._store = store
        self._rows = GroupStore(store.connection)
        self._reports = GroupReports(store, self._rows, host, conversations)
        self._host = host
        self._account = account
        self._pickle_key = pickle_key
        self._conversations = conversations
        self._emit = emit
        self._views: dict[str, GroupView] = {}
        self._watch = GroupWatch(store.connection, self._rows, host.queue_olm, self._notice)
        self._messages = GroupMessages(
            store,
            self._rows,
            host,
            pickle_key,
            conversations,
            self._watch,
            self._current,
            self._warn,
            lambda: self.rotation,
        )
        self._stashed = True
        """Group events may wait in the store (true at start: a crash may have left some)."""

    @property
    def me(self) -> str:
        return self._host.username

    @property
    def rotation(self) -> tuple[int, int]:
        """(messages, days): this device starts a new session for a group after either."""
        saved = self._store.get_meta(_ROTATION)
        if saved is None:
            return ROTATE_MESSAGES, ROTATE_DAYS
        messages, days = saved.split()
        return int(messages), int(days)

    def set_rotation(self, messages: int, days: int) -> None:
        if not (1 <= messages <= 10_000 and 1 <= days <= 365):
            raise GroupError("rotate after 1 to 10000 messages and 1 to 365 days")
        with self._store.transaction():
            self._store.set_meta(_ROTATION, f"{messages} {days}")

    # --- reading ------------------------------------------------------------------------

    def view(self, group_id: str) -> GroupView:
        """The group's state as this device verified it.

        Raises:
            GroupError: this device knows no such group.
        """
        if group_id not in self._views:
            view = None
            for signed, key in self._rows.chain(group_id):
                view, _ = apply_update(view, signed, _known_key(key))
            if view is None:
                raise GroupError(f"no group {group_id!r} on this device (see `obrolan group list`)")
            self._views[group_id] = view
        return self._views[group_id]

    def all(self) -> list[GroupView]:
        return [self.view(g) for g in self._rows.group_ids()]

    def resolve(self, ref: str) -> str:
        """A group id from its id, the start of it, or its exact title."""
        ids = self._rows.group_ids()
        if ref in ids:
            return ref
        matches = [g for g in ids if g.startswith(ref)] or [
            g for g in ids if self.view(g).title == ref
        ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise GroupError(f"no group {ref!r} on this device (see `obrolan group list`)")
        raise GroupError(f"{ref!r} matches {len(matches)} groups: give more of the id")

    def log(self, group_id: str) -> list[tuple[int, int, str]]:
        """The moderation log: (seq, the actor's time, what was done) for every update."""
        self.view(group_id)
        entries = []
        for signed, _ in self._rows.chain(group_id):
            update = peek(signed)
            entries.append((update.seq, update.at_ms, describe(update)))
        return entries

    def history(self, group_id: str, limit: int | None = None) -> list[Message]:
        return self._store.history(group_peer(group_id), limit)

    def join_requests(self, group_id: str) -> list[tuple[str, str]]:
        self.view(group_id)
        return self._rows.join_requests(group_id)

    def reports(self, group_id: str) -> list[Report]:
        self.view(group_id)
        return self._rows.reports(group_id)

    # --- changing the state: sign, check, store, send -----------------------------------

    async def create(self, title: str, members: list[str]) -> GroupView:
        """A new group with us as its owner and ``members`` in it."""
        invited = sorted(set(members) - {self.me})
        for member in invited:
            await self._check_addable(member)
        group_id = new_group_id(self.me)
        action = groups.Create(title=title, members=invited)
        return await self._act(group_id, action, "", genesis=True)

    async def act(self, group_id: str, action: groups.GroupAction, reason: str = "") -> GroupView:
        """Sign one change as us, check it as every member will, and send it to them.

        Raises:
            GroupError: we lack the role, or the change makes no sense (nothing is sent).
        """
        if isinstance(action, groups.Add):
            await self._check_addable(action.user)
        return await self._act(group_id, action, reason, genesis=False)

    async def _check_addable(self, username: str) -> None:
        if await self._host.account_key_of(username) is None:
            raise GroupError(
                f"{username} cannot be added: no such user, or their account key changed "
                f"and is not trusted yet (`obrolan trust {username}`)"
            )

    async def _act(
        self, group_id: str, action: groups.GroupAction, reason: str, *, genesis: bool
    ) -> GroupView:
        before = None if genesis else self.view(group_id)
        update = groups.GroupUpdate(
            group_id=group_id,
            seq=0 if before is None else before.seq + 1,
            prev=None if before is None else before.head,
            actor=self.me,
            at_ms=now_ms(),
            action=action,
            reason=reason,
        )
        signed = sign_update(self._account, update)
        try:
            after, _ = apply_update(before, signed, lambda _: self._account.public)
        except UpdateRejected as exc:
            raise GroupError(str(exc)) from None
        recipients = self._recipients(before, after)
        with self._store.transaction():
            self._store_update(group_id, update, signed, self._account.public, after)
            self._store.set_meta(_MADE + update_hash(signed).hex(), "1")
            chain = [s for s, _ in self._rows.chain(group_id)]
            for username in recipients:
                newcomer = before is None or username not in before.members
                body = content.GroupState(
                    message_id=new_id(),
                    sent_at_ms=now_ms(),
                    group_id=group_id,
                    updates=chain if newcomer else [signed],
                )
                self._host.queue_olm(username, body, None)
            self._host.queue_olm(
                self.me,
                content.GroupState(
                    message_id=new_id(),
                    sent_at_ms=now_ms(),
                    group_id=group_id,
                    updates=chain,
                ),
                None,
            )
            self._after_update(after, update, before)
        return after

    def _recipients(self, before: GroupView | None, after: GroupView) -> list[str]:
        """Everyone who must learn of the change: the members, and who just left."""
        people = set(after.members) | (set(before.members) if before is not None else set())
        people.discard(self.me)
        return sorted(people)

    def _store_update(
        self,
        group_id: str,
        update: groups.GroupUpdate,
        signed: groups.SignedGroupUpdate,
        actor_key: str,
        after: GroupView,
    ) -> None:
        self._rows.add_update(group_id, update.seq, signed, actor_key)
        self._views[group_id] = after
        self._conversations.notice(group_peer(group_id), describe(update))

    def _after_update(
        self, after: GroupView, update: groups.GroupUpdate, before: GroupView | None
    ) -> None:
        """What a verified update changes beyond the state: sessions, membership, messages."""
        group_id = after.group_id
        if before is not None and set(before.members) - set(after.members):
            self._rows.drop_outbound(group_id)  # a new session nobody who left can read
        action = update.action
        if isinstance(action, groups.DeleteMessage):
            found = self._store.find(group_peer(group_id), action.message_id)
            if found is not None and found[1].sender == action.sender:
                self._store.delete_for_everyone(found[0])
        if isinstance(action, groups.ApproveJoin | groups.RejectJoin):
            self._rows.drop_join_request(group_id, action.user)

    def share_with_own_device(self, device_id: str) -> int:
        """Give a newly linked device of ours the chain of every group we are in; returns how
        many (its members' devices then share their keys with it as with any member's)."""
        shared = 0
        with self._store.transaction():
            for view in self.all():
                if self.me not in view.members:
                    continue
                chain = [s for s, _ in self._rows.chain(view.group_id)]
                self._host.queue_olm(
                    self.me,
                    content.GroupState(
                        message_id=new_id(),
                        sent_at_ms=now_ms(),
                        group_id=view.group_id,
                        updates=chain,
                    ),
                    device_id,
                )
                shared += 1
        return shared

    async def invite(self, group_id: str, expires_in_seconds: int) -> str:
        """Create a signed invite link valid for ``expires_in_seconds``; returns the link."""
        invite_id = new_id()
        await self.act(
            group_id,
            groups.Invite(invite_id=invite_id, expires_at_ms=now_ms() + expires_in_seconds * 1000),
        )
        with self._store.transaction():
            self._store.set_meta(_OWN_INVITE + invite_id, "1")
        return invite_link(group_id, invite_id, self.me)

    async def join(self, link: str) -> str:
        """Ask to join with an invite link; returns the group id. An admin lets us in."""
        try:
            query = parse_qs(urlsplit(link).query)
            group_id, invite_id, inviter = query["group"][0], query["invite"][0], query["from"][0]
            request = content.GroupJoinRequest(
                message_id=new_id(), sent_at_ms=now_ms(), group_id=group_id, invite_id=invite_id
            )
        except (KeyError, IndexError, ValueError, msgspec.ValidationError):
            raise GroupError("that is not an obrolan invite link (obrolan://join?…)") from None
        if await self._host.account_key_of(inviter) is None:
            raise GroupError(f"the invite's author {inviter} is not trusted: check with them")
        with self._store.transaction():
            self._host.queue_olm(inviter, request, None)
        return group_id

    async def approve(self, group_id: str, username: str, reason: str = "") -> GroupView:
        for requester, invite_id in self.join_requests(group_id):
            if requester == username:
                return await self.act(
                    group_id, groups.ApproveJoin(user=username, invite_id=invite_id), reason
                )
        raise GroupError(f"{username} has not asked to join")

    async def reject(self, group_id: str, username: str, reason: str = "") -> GroupView:
        for requester, invite_id in self.join_requests(group_id):
            if requester == username:
                return await self.act(
                    group_id, groups.RejectJoin(user=username, invite_id=invite_id), reason
                )
        raise GroupError(f"{username} has not asked to join")

    # --- messages -----------------------------------------------------------------------

    async def send(self, group_id: str, text: str, reply_to: str | None = None) -> Message:
        """Post ``text``: one Megolm encryption, one upload for every member device.

        Raises:
            GroupError: we may not post (muted, admins only, not a member), or posts wait
                for updates another member's device named (:meth:`held`).
        """
        view = self.view(group_id)
        refusal = can_post(view, self.me, now_ms()) or self._watch.refusal(group_id)
        if refusal is not None:
            raise GroupError(f"you cannot post in {view.title}: {refusal}")
        return await self._messages.send(view, text, reply_to)

    def release(self, group_id: str) -> bool:
        """Post in the group again although another member's device named a state this
        device does not hold or agree with (their word against the server's); returns
        whether posts were held. A new fork holds them again."""
        self.view(group_id)
        with self._store.transaction():
            released = self._watch.release(group_id)
            if released:
                self._notice(group_id, "you released the hold: your posts here go out again")
        return released

    def held(self, group_id: str) -> str | None:
        """Why posts in the group wait now, if they do."""
        self.view(group_id)
        return self._watch.refusal(group_id)

    async def report(self, group_id: str, message: Message, reason: str) -> int:
        """Send a message, with its sender's signature, to the group's admins; returns how many."""
        view = self.view(group_id)
        found = self._store.find(group_peer(group_id), message.message_id)
        signed = None if found is None else self._rows.signed_of(found[0])
        if signed is None:
            raise GroupError("that message cannot be reported (it is not a signed group message)")
        return self._reports.send(view, signed, reason)

    # --- receiving ----------------------------------------------------------------------

    def stash(self, body: content.Plaintext) -> None:
        """Keep an Olm-carried group event to apply after the inbox transaction."""
        self._rows.add_inbox(body.sender, body.sender_device, content.encode(body.content))
        self._stashed = True

    async def process_inbox(self) -> list[Event]:
        """Apply the stashed group events, in arrival order (no query when none were)."""
        if not self._stashed:
            return []
        self._stashed = False
        events: list[Event] = []
        for entry_id, sender, device, raw in self._rows.inbox():
            unreadable: str | None = None
            try:
                body = content.decode_content(raw)
                events += await self._process(sender, device, body)
            except ServerUnreachable:
                self._stashed = True  # kept: applied once the server can be asked again
                raise
            except ObrolanError as exc:
                log.warning("a group event from %s/%s was dropped: %s", sender, device, exc)
                if isinstance(exc, RemoteProtocolError):  # malformed: say so, as for any message
                    unreadable = str(exc)
            with self._store.transaction():
                if unreadable is not None:
                    events.append(self._messages.unreadable_event(sender, unreadable))
                self._rows.done_inbox(entry_id)
        return events + self._messages.open_pending()

    async def _process(self, sender: str, device: str, body: content.Content) -> list[Event]:
        if isinstance(body, content.GroupState):
            return await self._receive_state(sender, device, body)
        if isinstance(body, content.GroupSync):
            return self._receive_sync(sender, device, body)
        if isinstance(body, content.GroupKey):
            return self._messages.receive_key(sender, device, body)
        if isinstance(body, content.GroupJoinRequest):
            return await self._receive_join_request(sender, body)
        if isinstance(body, content.GroupReport):
            return await self._reports.receive(self._current(body.group_id), sender, body)
        return []

    async def _receive_state(
        self, sender: str, device: str, body: content.GroupState
    ) -> list[Event]:
        events = []
        group_id = body.group_id
        stored = {s.update: s for s, _ in self._rows.chain(group_id)}
        # A whole chain taken into no state may hold updates signed before their actor
        # recovered (spec §23.7 step 4); never going back to a key older than one used.
        joining = self._current(group_id) is None
        oldest_allowed: dict[str, int] = {}
        for signed in body.updates:
            if signed.update in stored:
                continue  # already applied (a new member's full chain, our own echo)
            current = self._current(group_id)
            try:
                update = peek(signed)
                if update.group_id != group_id:
                    raise UpdateRejected(f"an update of group {update.group_id} came as {group_id}")
                if current is not None and 0 < update.seq == current.seq:
                    events += await self._contest(group_id, signed, update)
                    stored = {s.update: s for s, _ in self._rows.chain(group_id)}
                    continue
                key = await self._host.account_key_of(update.actor)
                if joining and key is not None:
                    keys = [*await self._host.earlier_account_keys(update.actor), key]
                    index = _signing_key(keys[oldest_allowed.get(update.actor, 0) :], signed)
                    if index is not None:
                        index += oldest_allowed.get(update.actor, 0)
                        oldest_allowed[update.actor] = index
                        key = keys[index]
                after, update = apply_update(current, signed, _known_key(key))
            except ServerUnreachable:
                raise  # not the update's fault: it stays stashed (process_inbox)
            except (UpdateRejected, ObrolanError) as exc:
                events.append(
                    self._warn(group_id, f"a group update from {sender} was rejected: {exc}")
                )
                if current is not None and _past(signed, current):
                    self._ask_for_updates(sender, device, current)
                break  # the rest of the batch follows the rejected one: reject it too
            assert key is not None
            with self._store.transaction():
                self._store_update(group_id, update, signed, key, after)
                self._after_update(after, update, current)
            events.append(
                Event(
                    "message", group_peer(group_id), self._store.history(group_peer(group_id), 1)[0]
                )
            )
        if self._current(group_id) is not None:
            with self._store.transaction():
                events += self._watch.recheck(group_id)
        return events

    async def _contest(
        self, group_id: str, signed: groups.SignedGroupUpdate, update: groups.GroupUpdate
    ) -> list[Event]:
        """Two updates at the same ``seq``, made at the same time on the same state: every
        device keeps the same one (:func:`_counts_first`). If ours is displaced and this
        device made it, it is made again on top of the other."""
        chain = self._rows.chain(group_id)
        head_signed, _ = chain[-1]
        head = peek(head_signed)
        parent: GroupView | None = None
        for earlier, earlier_key in chain[:-1]:
            parent, _ = apply_update(parent, earlier, _known_key(earlier_key))
        key = await self._host.account_key_of(update.actor)
        if parent is None or update.prev != parent.head:
            raise UpdateRejected("it does not follow this device's state of the group")
        after, update = apply_update(parent, signed, _known_key(key))  # rejected: raises
        if _counts_first(parent, head_signed, signed):
            with self._store.transaction():
                self._watch.displaced(group_id, update_hash(signed))
            return [
                self._warn(
                    group_id,
                    f"{update.actor}'s change came at the same time as "
                    f"{head.actor}'s, which counts: it must be made again",
                )
            ]
        assert key is not None
        with self._store.transaction():
            self._rows.drop_update(group_id, head.seq)
            self._watch.displaced(group_id, update_hash(head_signed))
            self._views.pop(group_id, None)
            self._store_update(group_id, update, signed, key, after)
            self._after_update(after, update, parent)
        events = [
            self._warn(
                group_id,
                f"{head.actor}'s change came at the same time as "
                f"{update.actor}'s, which counts instead",
            )
        ]
        if self._store.get_meta(_MADE + update_hash(head_signed).hex()):
            try:
                await self.act(group_id, head.action, head.reason)
            except GroupError as exc:
                events.append(self._warn(group_id, f"your change could not be made again: {exc}"))
        return events

    def _ask_for_updates(self, sender: str, device: str, current: GroupView) -> None:
        """We are behind the device that sent an update, or our last update is not the one
        it built on: ask it for its updates from our last ``seq`` on. What comes back is
        checked like any update; the rejected one counts only if it arrives again in a
        chain that leads up to it."""
        with self._store.transaction():
            self._host.queue_olm(
                sender,
                content.GroupSync(
                    message_id=new_id(),
                    sent_at_ms=now_ms(),
                    group_id=current.group_id,
                    from_seq=current.seq,
                ),
                device,
            )

    def _receive_sync(self, sender: str, device: str, request: content.GroupSync) -> list[Event]:
        """A member's device is behind: send it the updates from ``from_seq`` on we hold."""
        view = self._current(request.group_id)
        chain = [s for s, _ in self._rows.chain(request.group_id)]
        tail = chain[request.from_seq :]
        was_member = any(
            sender in (peek(s).actor, getattr(peek(s).action, "user", None)) for s in tail
        )
        if view is None or not tail or (sender not in view.members and not was_member):
            return []  # nothing newer, or someone the group never let in
        with self._store.transaction():
            self._host.queue_olm(
                sender,
                content.GroupState(
                    message_id=new_id(),
                    sent_at_ms=now_ms(),
                    group_id=request.group_id,
                    updates=tail,
                ),
                device,
            )
        return []

    def _current(self, group_id: str) -> GroupView | None:
        try:
            return self.view(group_id)
        except GroupError:
            return None

    def _notice(self, group_id: str, text: str) -> Event:
        """A notice in the group's conversation (inside the caller's transaction)."""
        return Event(
            "message", group_peer(group_id), self._conversations.notice(group_peer(group_id), text)
        )

    def receive_message(
        self, envelope: Envelope, ciphertext: groups.GroupCiphertext
    ) -> list[Event]:
        """Decrypt, check and store a group message (inside the inbox transaction)."""
        return self._messages.receive_message(envelope, ciphertext)

    def _warn(self, group_id: str, text: str) -> Event:
        log.warning("%s", text)
        with self._store.transaction():
            notice = self._conversations.notice(group_peer(group_id), f"⚠ {text}")
        return Event("message", group_peer(group_id), notice)

    async def _receive_join_request(
        self, sender: str, request: content.GroupJoinRequest
    ) -> list[Event]:
        view = self._current(request.group_id)
        if view is None or not view.is_admin(self.me):
            return []
        expires = view.invites.get(request.invite_id)
        if expires is None or expires <= now_ms() or sender in view.members:
            return []
        if not view.settings.approval and self._store.get_meta(_OWN_INVITE + request.invite_id):
            # Only the device that made the invite answers at once: two devices of ours
            # signing the same approval would fork the group's chain.
            await self.act(
                request.group_id, groups.ApproveJoin(user=sender, invite_id=request.invite_id)
            )
            return []
        with self._store.transaction():
            self._rows.add_join_request(request.group_id, sender, request.invite_id)
            notice = self._conversations.notice(
                group_peer(request.group_id),
                f"{sender} asks to join: `obrolan group approve {request.group_id[:8]} {sender}`",
            )
        return [Event("message", group_peer(request.group_id), notice)]


def _signing_key(keys: list[str], signed: groups.SignedGroupUpdate) -> int | None:
    """The index of the first of ``keys`` whose signature the update carries, if any."""
    for index, key in enumerate(keys):
        try:
            verify(key, group_update_bytes(signed.update), signed.signature)
        except SignatureError:
            continue
        return index
    return None


def _known_key(key: str | None) -> Callable[[str], str | None]:
    """The actor's account key as already looked up (``apply_update`` checks the actor)."""
    return lambda _actor: key


def _past(signed: groups.SignedGroupUpdate, view: GroupView) -> bool:
    """The update is further along than this device has got, or builds on another last
    update than ours (ours may be the one displaced)."""
    try:
        update = peek(signed)
    except UpdateRejected:
        return False
    return update.seq > view.seq + 1 or (update.seq == view.seq + 1 and update.prev != view.head)


_RANK = {"owner": 2, "admin": 1, "member": 0}


def _counts_first(
    parent: GroupView, ours: groups.SignedGroupUpdate, theirs: groups.SignedGroupUpdate
) -> bool:
    """Of two updates on the same state, the one that counts: the higher role then (the
    owner over an admin, an admin over a member, so nobody can undo a change of someone
    above them by racing it), and between equals the lower hash."""
    rank_ours = _RANK.get(parent.role(peek(ours).actor) or "", -1)
    rank_theirs = _RANK.get(parent.role(peek(theirs).actor) or "", -1)
    if rank_ours != rank_theirs:
        return rank_ours > rank_theirs
    return update_hash(ours) < update_hash(theirs)
