"""Two peers and a broker in one asyncio program: a direct, end-to-end encrypted message."""

import random

import anyio

from meshproto import AcceptingVerifier, Broker, ConnectionState, StaticRegistry
from meshproto_anyio import connect, running_broker
from meshproto_crypto import BoxSealer, Ed25519Signer, KeyPair


async def main() -> None:
    # An open mesh on a free loopback port (a real deployment verifies signatures).
    broker = Broker(
        StaticRegistry(open_mesh="demo"),
        verifier=AcceptingVerifier(),
        rng=random.Random(),
    )
    async with running_broker(broker, port=0) as server:
        alice_keys, bob_keys = KeyPair.generate(), KeyPair.generate()

        def peer(keys: KeyPair, name: str):  # the arguments every connect() needs
            return connect(
                server.url,
                mesh_id="demo",
                member_id=name,
                display_name=name,
                signer=Ed25519Signer(keys),
                sealer=BoxSealer(keys),
            )

        async with peer(alice_keys, "alice") as alice, peer(bob_keys, "bob") as bob:
            await bob.wait_state(ConnectionState.OPEN)
            message_id = await alice.send(bob_keys.pubkey, "hello, bob", priority="now")
            print("alice's message was acked as", message_id)
            async for message in bob.messages():
                print("bob received:", message.text)
                break


anyio.run(main)
