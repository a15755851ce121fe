"""The one queue of held replies (zmqstore/replies.py): the mode's rule decides, in arrival order."""
from zmqstore.replies import Replies


def test_ready_replies_leave_in_arrival_order_and_the_rest_wait_or_expire():
    sent = []
    replies = Replies(sent.append)
    for i, (until, deadline) in enumerate([(5, 10.0), (1, 10.5), (3, 11.0), (9, 11.5)]):
        replies.hold([b"id%d" % i], b"body%d" % i, i, i % 2 == 0, until, deadline)
    assert replies.next_deadline == 10.0 and len(replies) == 4
    replies.release(lambda until: until <= 3, lambda held: b"expired%d" % held.request_id, now=1.0)
    assert sent == [[b"id1", b"body1"], [b"id2", b"body2"]]     # a later reply is not stuck behind an earlier
    sent.clear()
    replies.release(lambda until: until <= 5, lambda held: b"expired%d" % held.request_id, now=11.6)
    assert sent == [[b"id0", b"body0"], [b"id3", b"expired3"]] and not replies


def test_a_pass_is_skipped_while_progress_stands_still_and_no_deadline_passed():
    sent = []
    replies = Replies(sent.append)
    replies.hold([b"a"], b"ok", 1, True, 4, 10.0)
    never = lambda until: False      # noqa: E731
    replies.release(never, lambda held: b"late", now=1.0, progress=(3,))
    assert not sent
    replies.release(lambda until: True, lambda held: b"late", now=2.0, progress=(3,))
    assert not sent                  # the same progress: nothing can have become ready, not looked at
    replies.release(lambda until: True, lambda held: b"late", now=3.0, progress=(4,))
    assert sent == [[b"a", b"ok"]]
    replies.hold([b"b"], b"ok", 2, True, 9, 10.0)
    replies.release(never, lambda held: b"late", now=10.0, progress=(4,))
    assert sent[-1] == [b"b", b"late"]   # a deadline passed: looked at although progress stood still


def test_fail_all_answers_every_held_reply_with_its_error():
    sent = []
    replies = Replies(sent.append)
    replies.hold([b"a"], b"ok", 1, True, 0, 10.0)
    replies.hold([b"b"], b"ok", 2, False, 7, 10.0)
    replies.release(lambda until: True, lambda held: b"failed%d" % held.request_id, now=0.0, fail_all=True)
    assert sent == [[b"a", b"failed1"], [b"b", b"failed2"]] and replies.next_deadline is None
