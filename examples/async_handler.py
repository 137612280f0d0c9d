"""A request handler reading through a cacheorm repo, on asyncio, with no web framework.

``handle(request)`` is what a FastAPI/Starlette/aiohttp route would call: it
takes a request as a plain dict and returns a response dict. It reads the
product through the cache with :func:`cacheorm.aio.get_or_load`: a hit costs
one cache read; on a miss exactly one of the concurrent requests queries the
(slow, fake) database and stores the product, and the others wait for it.

Run it::

    python examples/async_handler.py                          # in-process MemoryBackend
    python examples/async_handler.py redis://127.0.0.1:6380/0  # a Redis server you run

It serves 20 concurrent requests for 3 products and prints each response,
then how many database queries they took (3: one per product).
"""

from __future__ import annotations

import asyncio
import sys
from typing import NamedTuple

import cacheorm as co
from cacheorm import aio


class Product(NamedTuple):
    sku: str
    name: str
    price_cents: int


PRODUCT = co.Schema(Product, key="sku")


class FakeDatabase:
    """A slow database: each query takes 50 ms and is counted."""

    def __init__(self) -> None:
        self.queries = 0

    async def load_product(self, sku: str) -> Product:
        self.queries += 1
        await asyncio.sleep(0.05)  # the network round trip and the query
        return Product(sku, f"Product {sku}", 100 * len(sku))


class App:
    """What a service keeps between requests: its repo (and backend) and its database."""

    def __init__(self, backend: co.Backend | co.AsyncBackend, database: FakeDatabase) -> None:
        self.products = co.Repo(PRODUCT, backend=backend, ttl=300)
        self.database = database

    async def handle(self, request: dict[str, str]) -> dict[str, object]:
        """``GET /products/<sku>``: the product as JSON-ready data."""
        sku = request["path"].removeprefix("/products/")
        product = await aio.get_or_load(self.products, sku, self.database.load_product)
        return {"status": 200, "body": product._asdict()}


async def serve(backend: co.MemoryBackend | co.AsyncBackend) -> list[dict[str, object]]:
    """Answer 20 concurrent requests for 3 products; print each response and the query count."""
    database = FakeDatabase()
    app = App(backend, database)
    skus = ["a1", "b22", "c333"]
    requests = [{"method": "GET", "path": f"/products/{skus[i % 3]}"} for i in range(20)]
    responses = await asyncio.gather(*(app.handle(request) for request in requests))
    for request, response in zip(requests, responses, strict=True):
        print(request["path"], response["status"], response["body"])
    print(f"{len(responses)} requests, {database.queries} database queries")
    return responses


def main(argv: list[str]) -> None:
    # A MemoryBackend serves cacheorm.aio as well as the co functions.
    backend: co.MemoryBackend | co.AsyncBackend = (
        co.AsyncRedisBackend(url=argv[1]) if len(argv) > 1 else co.MemoryBackend()
    )

    async def run() -> None:
        try:
            await serve(backend)
        finally:
            if isinstance(backend, co.MemoryBackend):
                backend.close()
            else:
                await backend.aclose()

    asyncio.run(run())


if __name__ == "__main__":
    main(sys.argv)
