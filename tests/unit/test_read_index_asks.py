"""The ReadIndex state on both sides (zmqstore/leader/read_index.py), without sockets: which ask a read
waits for, which answers count, when asks are sent again, and when the primary answers."""
from zmqstore import protocol
from zmqstore.leader.read_index import Answers, Asks
from zmqstore.sends import Sends


class AppliedStorage:
    """What Asks reads of storage: the applied seq, and the data."""

    def __init__(self):
        self.applied_seq = 0
        self.data = {b"k": b"v"}

    def get(self, key):
        return self.data.get(key)


def test_a_read_waits_for_an_ask_sent_after_it_and_for_the_apply():
    storage = AppliedStorage()
    asks = Asks(storage)
    base = asks.sent
    assert Asks(storage).sent != base           # each process starts its asks at a random number
    read = asks.wait(b"k", 7)
    assert asks.take_ask(0.0, 0.1) == base + 1 and asks.take_ask(0.0, 0.1) is None   # one per batch of reads
    assert not read.ready()
    assert not asks.on_reply(base + 2, 50)      # never sent: ignored
    assert not asks.on_reply(1, 50)             # an ask of an earlier run of this node: ignored
    assert asks.on_reply(base + 1, 50) and not read.ready()      # answered, not applied yet
    storage.applied_seq = 50
    assert read.ready()
    assert protocol.decode_reply(read.reply) == (7, True, (b"v",))
    assert not asks.on_reply(base + 1, 60)      # an answer already taken changes nothing
    later = asks.wait(b"k", 8)
    assert not later.ready()                    # an earlier answer does not serve a later read
    assert asks.take_ask(0.0, 0.1) == base + 2


def test_a_later_answer_serves_earlier_reads_and_lost_asks_are_sent_again():
    storage = AppliedStorage()
    asks = Asks(storage)
    base = asks.sent
    first = asks.wait(b"k", 1)
    assert asks.take_ask(10.0, 0.1) == base + 1
    assert asks.take_ask(10.05, 0.1) is None    # unanswered, but not for long
    assert asks.take_ask(10.2, 0.1) == base + 2     # unanswered for a heartbeat interval: asked again
    second = asks.wait(b"k", 2)
    asks.unsent()                               # not even this one left
    assert asks.take_ask(10.21, 0.1) == base + 3
    storage.applied_seq = 9
    assert asks.on_reply(base + 3, 9)           # (from a new primary, say)
    assert first.ready() and second.ready()
    assert not asks.on_reply(base + 2, 9)       # behind the latest answer: ignored


def test_the_primary_answers_an_ask_once_its_round_is_confirmed_and_its_term_committed():
    out, answers = Sends(), Answers()
    answers.add(3, [b"node-3"], 3, 11)
    answers.add(3, [b"node-3"], 5, 12)          # a member's newer ask replaces its older one
    assert answers.answer(out, 3, 1, 90, confirmed_round=11, ready=True) is None and not out.take()
    answers.add(2, [b"node-2"], 4, 11)
    answers.answer(out, 3, 1, 90, confirmed_round=10, ready=True)
    assert not out.take() and answers
    answers.answer(out, 3, 1, 90, confirmed_round=11, ready=False)    # no entry of term 3 committed yet
    assert not out.take() and answers
    answers.answer(out, 3, 1, 95, confirmed_round=11, ready=True)
    (kind, envelope, body), = out.take()
    assert envelope == [b"node-2"] and protocol.decode_peer(body) == protocol.PeerMessage(
        "READ_INDEX_REPLY", (3, 1, 4, 95))
    answers.answer(out, 3, 1, 96, confirmed_round=12, ready=True)
    (kind, envelope, body), = out.take()
    assert envelope == [b"node-3"] and protocol.decode_peer(body).fields == (3, 1, 5, 96)
    assert not answers


def test_reads_held_before_this_node_led_wait_for_an_ask_it_answers_itself():
    """A secondary that becomes primary takes one more ask for the reads it holds and answers it
    like a member's; while that ask waits for its round, no newer one puts the round off."""
    storage = AppliedStorage()
    asks = Asks(storage)
    base = asks.sent
    read = asks.wait(b"k", 3)
    assert asks.take_ask(1.0, 0.1) == base + 1        # sent to the old primary, never answered
    assert asks.take_local(1.5, 2) == base + 2 and asks.take_local(1.6, 2) is None
    answers = Answers()
    answers.add(1, None, base + 2, 4)                 # this node's own ask: no envelope
    answers.answer(Sends(lambda node_id: True), 2, 1, 70, 3, True, asks)
    assert not read.ready() and answers               # round 4 not confirmed yet
    answers.answer(Sends(lambda node_id: True), 2, 1, 70, 4, True, asks)
    assert not answers and asks.answered == base + 2 and not read.ready()   # answered, not applied
    storage.applied_seq = 70
    assert read.ready()
    assert asks.take_local(2.0, 2) is None            # nothing waits any more


def test_an_own_ask_of_an_earlier_term_does_not_hold_back_the_next_term():
    """Elected, deposed before its own ask was answered (that term's Primary is gone), then elected
    again: the reads held meanwhile get a new own ask in the new term."""
    storage = AppliedStorage()
    asks = Asks(storage)
    base = asks.sent
    first = asks.wait(b"k", 1)
    assert asks.take_local(1.0, 2) == base + 1        # term 2: never answered
    second = asks.wait(b"k", 2)
    assert asks.take_ask(1.5, 0.1) == base + 2        # a secondary again: asked node 3, which died
    assert asks.take_local(2.0, 4) == base + 3        # term 4: a new own ask
    assert asks.on_reply(base + 3, 5)
    storage.applied_seq = 5
    assert first.ready() and second.ready()
