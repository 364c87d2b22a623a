"""Drives a wamp-cluster router with autobahn-python (asyncio), the client nobody here wrote.

    python autobahn_suite.py suite  --ws URL --rs HOST:PORT --serializer json|msgpack|cbor \
        --secrets DIR
    python autobahn_suite.py callee --ws URL --serializer S    (registers com.interop.py.*,
                                                                 prints "ready", runs on)
    python autobahn_suite.py caller --ws URL --serializer S    (calls com.interop.rust.*)

`suite` runs every check, prints "ok <name>" for each, and exits 1 at the first failure with
what went wrong. Run by tests/interop.rs against a real wamp-cluster process.
"""

import argparse
import asyncio
import sys
import traceback

from autobahn.asyncio.rawsocket import WampRawSocketClientFactory
from autobahn.asyncio.wamp import ApplicationSession
from autobahn.asyncio.websocket import WampWebSocketClientFactory
from autobahn.wamp import auth
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer
from autobahn.wamp.types import (
    CallOptions,
    CallResult,
    ComponentConfig,
    PublishOptions,
    RegisterOptions,
    SubscribeOptions,
)

SERIALIZERS = {"json": JsonSerializer, "msgpack": MsgPackSerializer, "cbor": CBORSerializer}
TIMEOUT = 10


class Refused(Exception):
    """The router ended the session before it opened (ABORT)."""

    def __init__(self, reason, message):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


async def connect(args, realm="realm1", rawsocket=False, authmethods=None, authid=None,
                  authextra=None, on_challenge=None):
    loop = asyncio.get_running_loop()
    joined = loop.create_future()

    class Session(ApplicationSession):
        def onConnect(self):
            self.join(realm, authmethods=authmethods, authid=authid, authextra=authextra)

        def onChallenge(self, challenge):
            return on_challenge(challenge)

        def onJoin(self, details):
            if not joined.done():
                joined.set_result(self)

        def onLeave(self, details):
            if not joined.done():
                joined.set_exception(Refused(details.reason, details.message))
            self.disconnect()

    serializer = SERIALIZERS[args.serializer]()
    make = lambda: Session(ComponentConfig(realm))  # noqa: E731
    if rawsocket:
        host, port = args.rs.rsplit(":", 1)
        factory = WampRawSocketClientFactory(make, serializer=serializer)
    else:
        host, port = args.ws.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        factory = WampWebSocketClientFactory(make, url=args.ws, serializers=[serializer])
    await asyncio.wait_for(loop.create_connection(factory, host, int(port)), TIMEOUT)
    return await asyncio.wait_for(joined, TIMEOUT)


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


async def expect_error(awaitable, uri):
    try:
        result = await asyncio.wait_for(awaitable, TIMEOUT)
    except ApplicationError as e:
        expect(e.error == uri, f"expected {uri}, got {e.error}: {e.args}")
        return e
    raise AssertionError(f"expected {uri}, got a result: {result}")


async def wait_for(predicate, what, seconds=TIMEOUT):
    for _ in range(int(seconds * 100)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def interruptible(interrupted):
    """A procedure that takes 10 s unless interrupted, which it notes in `interrupted`."""

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            interrupted.append(True)
            raise
        return "late"

    return slow


# ---- RPC ------------------------------------------------------------------------------------

async def call_with_args_and_kwargs(args):
    callee, caller = await connect(args), await connect(args, rawsocket=True)
    await callee.register(lambda *a, **kw: CallResult(*a, **kw), "com.interop.echo")
    big = "x" * (1024 * 1024)
    cases = [
        ((), {}),
        (("héllo wörld ✓ 你好 🚀",), {"ключ": "значение"}),
        (([1, [2, [3, {"a": [None, True, 1.5]}]]],), {"nested": {"deep": [{"x": -7}]}}),
        ((big,), {"size": len(big)}),
    ]
    for positional, keywords in cases:
        result = await asyncio.wait_for(caller.call("com.interop.echo", *positional, **keywords), TIMEOUT)
        if isinstance(result, CallResult):
            got_args, got_kwargs = list(result.results), dict(result.kwresults)
        else:
            got_args, got_kwargs = ([result] if result is not None else []), {}
        expect(got_args == list(positional), f"args {str(got_args)[:80]} != {str(positional)[:80]}")
        expect(got_kwargs == keywords, f"kwargs {str(got_kwargs)[:80]} != {str(keywords)[:80]}")
    callee.leave(); caller.leave()


async def application_errors_keep_their_args_and_kwargs(args):
    callee, caller = await connect(args), await connect(args)

    def fail(*a, **kw):
        raise ApplicationError("com.interop.error.bad", "why", 42, detail={"k": [1, 2]})

    await callee.register(fail, "com.interop.fail")
    e = await expect_error(caller.call("com.interop.fail"), "com.interop.error.bad")
    expect(list(e.args) == ["why", 42], f"args {e.args}")
    expect(e.kwargs == {"detail": {"k": [1, 2]}}, f"kwargs {e.kwargs}")
    await expect_error(caller.call("com.interop.no.such.thing"), "wamp.error.no_such_procedure")
    callee.leave(); caller.leave()


async def progressive_results_arrive_in_order(args):
    callee, caller = await connect(args), await connect(args)

    async def count(n, details=None):
        for i in range(n):
            if details.progress:
                details.progress(i)
            await asyncio.sleep(0.001)
        return "done"

    await callee.register(count, "com.interop.count", RegisterOptions(details_arg="details"))
    seen = []
    result = await asyncio.wait_for(
        caller.call("com.interop.count", 5, options=CallOptions(on_progress=seen.append)), TIMEOUT)
    expect(result == "done", f"result {result}")
    expect(seen == [0, 1, 2, 3, 4], f"progress {seen}")
    callee.leave(); caller.leave()


async def call_timeout_ends_the_call_and_interrupts_the_callee(args):
    callee, caller = await connect(args), await connect(args)
    interrupted = []
    await callee.register(interruptible(interrupted), "com.interop.slow")
    await expect_error(caller.call("com.interop.slow", options=CallOptions(timeout=300)),
                       "wamp.error.timeout")
    await wait_for(lambda: interrupted, "the callee's interrupt")
    callee.leave(); caller.leave()


async def cancel_interrupts_the_callee(args):
    callee, caller = await connect(args), await connect(args)
    interrupted = []
    await callee.register(interruptible(interrupted), "com.interop.cancel")
    call = asyncio.ensure_future(caller.call("com.interop.cancel"))
    await asyncio.sleep(0.2)
    call.cancel()
    try:
        await asyncio.wait_for(call, TIMEOUT)
        raise AssertionError("the canceled call returned")
    except (asyncio.CancelledError, ApplicationError):
        pass
    await wait_for(lambda: interrupted, "the callee's interrupt")
    callee.leave(); caller.leave()


async def shared_registrations_follow_each_policy(args):
    caller = await connect(args)
    for policy in ["roundrobin", "random", "first", "last"]:
        callees = []
        for i in range(3):
            c = await connect(args)
            await c.register(lambda i=i: i, f"com.interop.shared.{policy}",
                             RegisterOptions(invoke=policy))
            callees.append(c)
        counts = [0, 0, 0]
        for _ in range(60):
            counts[await asyncio.wait_for(caller.call(f"com.interop.shared.{policy}"), TIMEOUT)] += 1
        expected = {"roundrobin": [20, 20, 20], "first": [60, 0, 0], "last": [0, 0, 60]}
        if policy in expected:
            expect(counts == expected[policy], f"{policy}: {counts}")
        else:
            expect(all(c > 0 for c in counts), f"{policy}: {counts}")
        for c in callees:
            c.leave()
    caller.leave()


async def a_callee_that_disconnects_mid_call_fails_the_call(args):
    callee, caller = await connect(args), await connect(args)

    async def hang():
        await asyncio.sleep(30)

    await callee.register(hang, "com.interop.hang")
    call = asyncio.ensure_future(caller.call("com.interop.hang"))
    await asyncio.sleep(0.2)
    callee.disconnect()
    await expect_error(call, "wamp.error.canceled")
    caller.leave()


# ---- PubSub ---------------------------------------------------------------------------------

async def publish_with_acknowledge_reaches_subscribers(args):
    sub, pub = await connect(args), await connect(args)
    got = []
    await sub.subscribe(lambda *a, **kw: got.append((a, kw)), "com.interop.topic")
    publication = await asyncio.wait_for(
        pub.publish("com.interop.topic", "ü", 2, k={"n": None}, options=PublishOptions(acknowledge=True)),
        TIMEOUT)
    expect(publication.id > 0, f"publication {publication}")
    await wait_for(lambda: got, "the event")
    expect(got == [(("ü", 2), {"k": {"n": None}})], f"event {got}")
    sub.leave(); pub.leave()


async def exclusion_and_eligibility_pick_the_receivers(args):
    pub = await connect(args)
    subs = [await connect(args) for _ in range(3)]
    got = [[] for _ in subs]
    for i, s in enumerate(subs):
        await s.subscribe(lambda n, i=i: got[i].append(n), "com.interop.select")
    await pub.subscribe(lambda n: got.append(("publisher", n)), "com.interop.select")
    ids = [s._session_id for s in subs]
    authid = subs[1]._authid
    ack = dict(acknowledge=True)
    await pub.publish("com.interop.select", 1, options=PublishOptions(exclude=[ids[0]], **ack))
    await pub.publish("com.interop.select", 2, options=PublishOptions(eligible=[ids[2]], **ack))
    await pub.publish("com.interop.select", 3, options=PublishOptions(eligible_authid=[authid], **ack))
    await pub.publish("com.interop.select", 4, options=PublishOptions(exclude_authrole=["anonymous"], **ack))
    await pub.publish("com.interop.select", 5, options=PublishOptions(exclude_me=False, eligible_authrole=["anonymous"], **ack))
    await wait_for(lambda: len(got[0]) >= 1 and len(got[1]) >= 3 and len(got[2]) >= 3, "the events")
    await asyncio.sleep(0.2)
    expect(got[0] == [5], f"first {got[0]}")
    expect(got[1] == [1, 3, 5], f"second {got[1]}")
    expect(got[2] == [1, 2, 5], f"third {got[2]}")
    expect(got[3:] == [("publisher", 5)], f"publisher {got[3:]}")
    for s in subs:
        s.leave()
    pub.leave()


async def pattern_subscriptions_get_the_topic(args):
    sub, pub = await connect(args), await connect(args)
    got = []
    opts = dict(details_arg="details")
    await sub.subscribe(lambda n, details: got.append(("prefix", n, details.topic)), "com.interop.pat.",
                        SubscribeOptions(match="prefix", **opts))
    await sub.subscribe(lambda n, details: got.append(("wildcard", n, details.topic)), "com.interop..w",
                        SubscribeOptions(match="wildcard", **opts))
    await pub.publish("com.interop.pat.a.b", 1, options=PublishOptions(acknowledge=True))
    await pub.publish("com.interop.x.w", 2, options=PublishOptions(acknowledge=True))
    await wait_for(lambda: len(got) >= 2, "the events")
    expect(sorted(got) == [("prefix", 1, "com.interop.pat.a.b"), ("wildcard", 2, "com.interop.x.w")],
           f"events {got}")
    sub.leave(); pub.leave()


async def publisher_identification_names_the_publisher(args):
    sub, pub = await connect(args), await connect(args)
    got = []
    await sub.subscribe(lambda details: got.append(details.publisher), "com.interop.who",
                        SubscribeOptions(details_arg="details"))
    # autobahn-python has no disclose_me for publications: the role's rule for this topic
    # discloses (`disclose = true`).
    await pub.publish("com.interop.who", options=PublishOptions(acknowledge=True))
    await wait_for(lambda: got, "the event")
    expect(got == [pub._session_id], f"publisher {got}")
    sub.leave(); pub.leave()


async def a_retained_event_reaches_a_later_subscriber(args):
    pub = await connect(args)
    await pub.publish("com.interop.retained", "first", options=PublishOptions(retain=True, acknowledge=True))
    await pub.publish("com.interop.retained", "last", options=PublishOptions(retain=True, acknowledge=True))
    sub = await connect(args)
    got = []
    await sub.subscribe(lambda v, details: got.append((v, details.retained)), "com.interop.retained",
                        SubscribeOptions(get_retained=True, details_arg="details"))
    await wait_for(lambda: got, "the retained event")
    await asyncio.sleep(0.1)
    expect(got == [("last", True)], f"retained {got}")
    sub.leave(); pub.leave()


# ---- Authentication and authorization -------------------------------------------------------

def read(args, name):
    with open(f"{args.secrets}/{name}") as f:
        return f.read().strip()


async def every_auth_method_admits_good_credentials_only(args):
    ticket = read(args, "ticket")
    secret = read(args, "secret")
    seed = bytes.fromhex(read(args, "cryptosign.seed"))

    def ticket_answer(value):
        return lambda challenge: value

    def cra_answer(value):
        def answer(challenge):
            key = value.encode("utf8")
            if "salt" in challenge.extra:
                key = auth.derive_key(value, challenge.extra["salt"], challenge.extra["iterations"],
                                      challenge.extra["keylen"])
            return auth.compute_wcs(key, challenge.extra["challenge"])
        return answer

    from autobahn.wamp.cryptosign import CryptosignKey
    good_key = CryptosignKey.from_bytes(seed)
    bad_key = CryptosignKey.from_bytes(bytes(32))

    def cs_answer(key):
        return lambda challenge: key.sign_challenge(challenge)

    cases = [
        ("ticket", "alice", ticket_answer(ticket), None, True),
        ("ticket", "alice", ticket_answer("guess"), None, False),
        ("wampcra", "bob", cra_answer(secret), None, True),
        ("wampcra", "bob", cra_answer("wrong"), None, False),
        ("wampcra", "bob-salted", cra_answer(secret), None, True),
        ("wampcra", "bob-salted", cra_answer("wrong"), None, False),
        ("cryptosign", "carol", cs_answer(good_key), {"pubkey": good_key.public_key()}, True),
        ("cryptosign", "carol", cs_answer(bad_key), {"pubkey": bad_key.public_key()}, False),
        ("ticket", "mallory", ticket_answer("x"), None, False),
    ]
    for method, authid, answer, extra, ok in cases:
        try:
            s = await connect(args, realm="secure", authmethods=[method], authid=authid,
                              authextra=extra, on_challenge=answer)
            expect(ok, f"{method} {authid}: admitted with wrong credentials")
            expect(s._authrole == "user", f"{method}: role {s._authrole}")
            s.leave()
        except Refused as e:
            expect(not ok, f"{method} {authid}: refused: {e}")
            expect(e.reason == "wamp.error.authentication_failed", f"{method} {authid}: {e.reason}")
    try:
        await connect(args, realm="secure")
        raise AssertionError("anonymous admitted to a realm without an anonymous role")
    except Refused as e:
        expect(e.reason == "wamp.error.no_auth_method", f"anonymous: {e.reason}")
    try:
        await connect(args, realm="no.such.realm")
        raise AssertionError("a realm that does not exist")
    except Refused as e:
        expect(e.reason == "wamp.error.no_such_realm", f"no realm: {e.reason}")


async def roles_refuse_what_they_do_not_allow(args):
    s = await connect(args, realm="secure", authmethods=["ticket"], authid="alice",
                      on_challenge=lambda c: read(args, "ticket"))
    try:
        await asyncio.wait_for(s.register(lambda: 1, "com.example.other"), TIMEOUT)
        raise AssertionError("registered without the right")
    except ApplicationError as e:
        expect(e.error == "wamp.error.not_authorized", e.error)
    await s.register(lambda: "mine", "com.example.mine")
    expect(await s.call("com.example.mine") == "mine", "own procedure")
    await expect_error(s.call("org.example.x"), "wamp.error.not_authorized")
    await expect_error(s.publish("com.example.t", options=PublishOptions(acknowledge=True)),
                       "wamp.error.not_authorized")
    try:
        await asyncio.wait_for(s.subscribe(lambda: None, "org.t"), TIMEOUT)
        raise AssertionError("subscribed without the right")
    except ApplicationError as e:
        expect(e.error == "wamp.error.not_authorized", e.error)
    s.leave()


# ---- Meta API -------------------------------------------------------------------------------

async def meta_procedures_and_events_answer(args):
    watcher = await connect(args)
    joins, regs = [], []
    await watcher.subscribe(lambda details: joins.append(details["session"]), "wamp.session.on_join")
    await watcher.subscribe(lambda session, reg: regs.append(reg["uri"]), "wamp.registration.on_create")
    other = await connect(args)
    await wait_for(lambda: other._session_id in joins, "on_join")
    await other.register(lambda: 1, "com.interop.meta")
    await wait_for(lambda: "com.interop.meta" in regs, "on_create")
    rid = await watcher.call("wamp.registration.lookup", "com.interop.meta")
    expect(isinstance(rid, int), f"lookup {rid}")
    expect(await watcher.call("wamp.registration.count_callees", rid) == 1, "count_callees")
    expect(await watcher.call("wamp.registration.list_callees", rid) == [other._session_id], "list_callees")
    count = await watcher.call("wamp.session.count")
    expect(count >= 2, f"session.count {count}")
    info = await watcher.call("wamp.session.get", other._session_id)
    expect(info["session"] == other._session_id and info["authrole"] == "anonymous", f"get {info}")
    await expect_error(watcher.call("wamp.session.get", 1), "wamp.error.no_such_session")
    other.leave(); watcher.leave()


CHECKS = [
    call_with_args_and_kwargs,
    application_errors_keep_their_args_and_kwargs,
    progressive_results_arrive_in_order,
    call_timeout_ends_the_call_and_interrupts_the_callee,
    cancel_interrupts_the_callee,
    shared_registrations_follow_each_policy,
    a_callee_that_disconnects_mid_call_fails_the_call,
    publish_with_acknowledge_reaches_subscribers,
    exclusion_and_eligibility_pick_the_receivers,
    pattern_subscriptions_get_the_topic,
    publisher_identification_names_the_publisher,
    a_retained_event_reaches_a_later_subscriber,
    every_auth_method_admits_good_credentials_only,
    roles_refuse_what_they_do_not_allow,
    meta_procedures_and_events_answer,
]


async def suite(args):
    for check in CHECKS:
        try:
            await asyncio.wait_for(check(args), 60)
        except Exception:
            print(f"FAILED {check.__name__}", flush=True)
            traceback.print_exc()
            return 1
        print(f"ok {check.__name__}", flush=True)
    return 0


# ---- The two directions of interop with the Rust client -------------------------------------

async def callee(args):
    s = await connect(args)

    def echo(*a, **kw):
        return CallResult(*a, **kw)

    def fail(*a, **kw):
        raise ApplicationError("com.interop.py.error", "from python", n=1)

    async def progress(n, details=None):
        for i in range(n):
            if details.progress:
                details.progress(i)
        return n

    await s.register(echo, "com.interop.py.echo")
    await s.register(fail, "com.interop.py.fail")
    await s.register(progress, "com.interop.py.progress", RegisterOptions(details_arg="details"))
    print("ready", flush=True)
    await asyncio.sleep(3600)


async def caller(args):
    s = await connect(args)
    result = await asyncio.wait_for(s.call("com.interop.rust.echo", "ü", [1, {"a": None}], k=True), TIMEOUT)
    expect(isinstance(result, CallResult), f"result {result}")
    expect(list(result.results) == ["ü", [1, {"a": None}]] and result.kwresults == {"k": True},
           f"result {result.results} {result.kwresults}")
    e = await expect_error(s.call("com.interop.rust.fail"), "com.interop.rust.error")
    expect(list(e.args) == ["from rust"] and e.kwargs == {"n": 2}, f"error {e.args} {e.kwargs}")
    seen = []
    n = await asyncio.wait_for(
        s.call("com.interop.rust.progress", 3, options=CallOptions(on_progress=seen.append)), TIMEOUT)
    expect(n == 3 and seen == [0, 1, 2], f"progress {seen} then {n}")
    print("ok caller", flush=True)
    s.leave()
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["suite", "callee", "caller"])
    parser.add_argument("--ws", required=True)
    parser.add_argument("--rs")
    parser.add_argument("--serializer", default="json", choices=sorted(SERIALIZERS))
    parser.add_argument("--secrets")
    args = parser.parse_args()
    run = {"suite": suite, "callee": callee, "caller": caller}[args.mode]
    try:
        sys.exit(asyncio.run(run(args)) or 0)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
