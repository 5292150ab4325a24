"""Flower's own round cost, for `round_overhead.py`: run inside Flower's virtual environment.

Never imports medsyft (its pins must not meet Flower's). Starts Flower's gRPC server
(`flwr.server.start_server`, FedAvg) and N clients (`flwr.client.start_client`), each
in a process of its own on loopback; a client's `fit` sends the global weights straight
back (no training), so a round is Flower's transport and orchestration alone. The
strategy stamps each round's start (`configure_fit`) and end (`aggregate_fit`); the
first round is a warm-up. Prints one JSON line.

    python _flower_round.py --sites 2 --mb 40 --rounds 3 --port 9091
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
import warnings


def _weights(mb: float) -> list:
    import numpy as np

    n = max(1, int(mb * 2**20 / 4))
    return [np.full(n - n // 10, 0.5, np.float32), np.full(n // 10 or 1, 0.25, np.float32)]


def _client(address: str, mb: float) -> None:
    warnings.filterwarnings("ignore")
    import flwr as fl

    class Echo(fl.client.NumPyClient):
        def get_parameters(self, config):  # noqa: ANN001, ANN201
            return _weights(mb)

        def fit(self, parameters, config):  # noqa: ANN001, ANN201
            return parameters, 1, {}

        def evaluate(self, parameters, config):  # noqa: ANN001, ANN201
            return 0.0, 1, {}

    fl.client.start_client(server_address=address, client=Echo().to_client(),
                           grpc_max_message_length=1 << 30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=9091)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import flwr as fl

    stamps: dict[int, list[float]] = {}

    class Timed(fl.server.strategy.FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
            stamps[server_round] = [time.perf_counter()]
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
            out = super().aggregate_fit(server_round, results, failures)
            stamps[server_round].append(time.perf_counter())
            return out

    address = f"127.0.0.1:{args.port}"
    ctx = mp.get_context("spawn")
    clients = [ctx.Process(target=_client, args=(address, args.mb), daemon=True)
               for _ in range(args.sites)]
    for c in clients:
        c.start()
    strategy = Timed(min_fit_clients=args.sites, min_available_clients=args.sites,
                     fraction_evaluate=0.0, min_evaluate_clients=0,
                     initial_parameters=fl.common.ndarrays_to_parameters(_weights(args.mb)))
    fl.server.start_server(server_address=address, strategy=strategy,
                           config=fl.server.ServerConfig(num_rounds=args.rounds + 1),
                           grpc_max_message_length=1 << 30)
    for c in clients:
        c.join(timeout=30)
        if c.is_alive():
            c.kill()
    rounds = [round(end - start, 4) for r, (start, end) in sorted(stamps.items()) if r > 1]
    print(json.dumps({"system": "flower", "version": fl.__version__, "sites": args.sites,
                      "weights_mb": args.mb, "rounds_s": rounds}))


if __name__ == "__main__":
    main()
