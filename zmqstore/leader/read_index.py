"""ReadIndex reads (docs/REPLICATION.md, "Reads"): a linearizable GET that a secondary serves from its
own data, after asking its primary for the commit seq, as in the Raft thesis, section 6.4.

Secondary (`Asks`, one per process, kept across primaries and terms): every GET with the `read_index`
option that arrives in a loop iteration waits for one READ_INDEX sent at the end of that iteration
(its `ask`: a counter that starts at a random number in each process, so an answer meant for an
earlier run of this node, which a ROUTER hands to the new one, names no ask of this run). The reply
is held until an answer to that ask, or to a later one, has come, and this node has applied the seq
the answer names; then the key is read from the applied data. An ask that could not be sent is sent
again in the next iteration, one unanswered for a heartbeat interval is asked again; reads the
primary never answers (it died, it was cut off) are answered by a later ask, to the same or a new
primary: any ask sent after a read arrived, answered by the primary of its term, serves it. Reads
held when this node becomes primary itself are answered by it (`take_local`): it takes one more
ask and answers it as it answers a member's, so they are served once its own rule allows.

Primary (`Answers`): a READ_INDEX from a member in this term waits, as the primary's own linearizable
reads do, for a heartbeat round started after it arrived to be confirmed by a majority, and for the
commit of an entry of this term (a primary elected moments ago may not know the last commit yet);
then it is answered with the commit seq of that moment. Every write acknowledged before the ask was
sent is committed at or below that seq, and the confirmed round shows no other node was primary
meanwhile, so the secondary's read of data applied up to it is linearizable.
"""
import random

from .. import protocol

ASK_BASE_BITS = 48          # asks of a process start at a random number below 2**48


class ReadIndexWait:
    """A held GET on a secondary (replies.py): ready once its ask is answered and applied."""

    __slots__ = ("asks", "ask", "key", "request_id")

    def __init__(self, asks, ask, key, request_id):
        self.asks, self.ask, self.key, self.request_id = asks, ask, key, request_id

    def ready(self) -> bool:
        asks = self.asks
        return asks.answered >= self.ask and asks.storage.applied_seq >= asks.index

    @property
    def reply(self) -> bytes:
        """The reply, built when the read is released: the key as this node has applied it."""
        return protocol.encode_ok(self.request_id, self.asks.storage.get(self.key))


class Asks:
    """A secondary's side: asks to whichever primary it follows (answers are taken only from that
    primary, in its term: Secondary.on_message)."""

    def __init__(self, storage):
        self.storage = storage
        self.sent = random.SystemRandom().getrandbits(ASK_BASE_BITS)     # the latest ask sent
        self.sent_at = 0.0      # when
        self.answered = self.sent       # the latest ask answered
        self.index = 0          # the commit seq that answer named
        self._wanted = False    # a read waits for the next ask
        self._local = (0, 0)    # (term, ask): the ask this node answers itself, as primary of that term

    def wait(self, key, request_id) -> ReadIndexWait:
        """A read that arrived now: it waits for the ask sent at the end of this iteration."""
        self._wanted = True
        return ReadIndexWait(self, self.sent + 1, key, request_id)

    def take_ask(self, now, resend_after):
        """The ask to send now, or None: one when a read arrived since the last was sent, or when
        the last has gone unanswered for `resend_after` seconds (an ask or its answer can be lost:
        a connection not up yet, a primary that stepped down; any later answer serves earlier reads)."""
        if not self._wanted and not (self.answered < self.sent and now - self.sent_at >= resend_after):
            return None
        self._wanted = False
        self.sent += 1
        self.sent_at = now
        return self.sent

    def take_local(self, now, term):
        """This node leads `term` now: the ask that the reads it held as a secondary wait for, to
        be answered by itself like a member's (Primary.on_read_index); None when none waits, or
        its own ask of this term is still being answered (a newer one would put its round off
        again). An own ask of an earlier term died with that term's Primary: it is replaced."""
        local_term, local = self._local
        if local_term == term and self.answered < local:
            return None
        if not (self._wanted or self.answered < self.sent):
            return None
        self._wanted = False
        self.sent += 1
        self._local = (term, self.sent)
        self.sent_at = now
        return self.sent

    def unsent(self):
        """The ask just taken could not be sent (its peer cannot take it now): ask again next time."""
        self._wanted = True

    def on_reply(self, ask, commit_seq) -> bool:
        """An answer from the primary this follows, in its term. False for an ask never sent or
        already passed (a stale or forged answer changes nothing)."""
        if not self.answered < ask <= self.sent:
            return False
        self.answered, self.index = ask, max(self.index, commit_seq)
        return True

    @property
    def progress(self):
        return self.answered, self.storage.applied_seq


class Answers:
    """The primary's side: the latest ask of each member, waiting for its round (an answer to a later
    ask serves the reads of every earlier one, so a member's newer ask replaces its older one: the
    asks kept are bounded by the membership)."""

    def __init__(self):
        self._waiting = {}      # node id -> (envelope, ask, round wanted)

    def __bool__(self):
        return bool(self._waiting)

    def add(self, node_id, envelope, ask, round_wanted):
        self._waiting[node_id] = (envelope, ask, round_wanted)

    def answer(self, out, term, node_id, commit_seq, confirmed_round, ready, own_asks=None):
        """Answer, with `commit_seq`, every ask whose round is confirmed, when `ready` (an entry of
        this term committed); this node's own ask (no envelope) in `own_asks`."""
        if not ready or not self._waiting:
            return
        for asker, (envelope, ask, round_wanted) in list(self._waiting.items()):
            if round_wanted <= confirmed_round:
                if envelope is None:
                    own_asks.on_reply(ask, commit_seq)
                else:
                    out.reply_peer(envelope, protocol.encode_peer("READ_INDEX_REPLY", term, node_id, ask, commit_seq))
                del self._waiting[asker]
