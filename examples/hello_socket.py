"""The socket API in 15 lines: bob listens, alice connects, says hello, then teleports |+⟩.

Start a network first (`qnet up examples/chain4.toml`), then `python examples/hello_socket.py`;
both applications run here, in two threads, each with its own handle on its node's daemon.
"""

import threading

import qnet

with qnet.connect("bob") as bob, qnet.connect("alice") as alice:
    srv = bob.socket()
    srv.bind(7)
    srv.listen()  # listening before alice connects: no race

    def serve() -> None:
        conn, peer = srv.accept()
        print("bob got", conn.recv(), "from", peer)
        q = conn.recv_qubit()  # teleported over an end-to-end pair, corrected
        print("bob measures the qubit in X:", q.measure("X"), "(0 means |+⟩)")

    server = threading.Thread(target=serve)
    server.start()
    with alice.socket() as c:
        c.connect(("bob", 7))
        c.send(b"hello from alice")
        q = alice.qubit()  # |0⟩
        q.h()  # |+⟩
        c.send_qubit(q)  # q is bob's now
    server.join()
