"""The cluster magic: a Ray cluster's nodes and how a model splits over them; a local cluster to learn on."""

from __future__ import annotations

import os
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument

from .common import magic_command, parse


@magics_class
class ClusterMagics(Magics):
    """``%vllm_cluster``."""

    @line_magic
    @magic_command()
    @argument("address", nargs="?", help="the cluster's job API, http://HEAD:8265 (default: $MIXVLLM_CLUSTER, or "
              "the local cluster this kernel started)")
    @argument("--model", help="plan this model over the cluster's GPUs (TP within a node, PP across nodes)")
    @argument("--max-model-len", type=int, help="context length the plan must hold (default: the model's)")
    @argument("--gpu", help="the nodes' GPU when Ray does not name it: a name such as H100, or GiB")
    @argument("--start-local", action="store_true", help="start a Ray cluster on this machine (token auth on)")
    @argument("--workers", type=int, default=0, help="with --start-local: worker nodes beside the head")
    @argument("--num-cpus", type=int, default=2, help="with --start-local: CPUs the head offers")
    @argument("--stop-local", action="store_true", help="stop the local cluster(s) this kernel started")
    def vllm_cluster(self, line: str = "") -> Any:
        """Show a Ray cluster's nodes (CPUs, GPUs, memory) and, with ``--model``, how to serve a model across them.

        Serve on it with ``%vllm_serve --cluster ADDRESS``: the server is a Ray job, and every magic, the
        panel and the proxy work on it as on a local one. ``--start-local`` starts a cluster on this
        machine (loopback, Ray's token authentication on) that stops with the kernel or ``--stop-local``.
        """
        from .. import ray_cluster

        args = parse(self.vllm_cluster, line)
        if args.stop_local:
            stopped = [f"{c.address} ({c.stop()} processes)" for c in ray_cluster.local_clusters()]
            print("stopped " + ", ".join(stopped) if stopped else "no local cluster was started by this kernel")
            return None
        if args.start_local:
            cluster = ray_cluster.start_local_cluster(num_cpus=args.num_cpus, workers=args.workers)
            print(f"Ray cluster at {cluster.address} (token authentication on; stops with this kernel). "
                  f"Serve on it: %vllm_serve --cluster {cluster.address}")
            address = cluster.address
        else:
            local = ray_cluster.local_clusters()
            address = args.address or os.environ.get("MIXVLLM_CLUSTER") or (local[-1].address if local else "")
            if not address:
                raise UsageError("no cluster address: give http://HEAD:8265, set MIXVLLM_CLUSTER, or start one "
                                 "here with --start-local")
        nodes = ray_cluster.cluster_nodes(address)
        print(f"{address}: {len(nodes)} node(s)")
        for node in nodes:
            gpus = f"{node['gpus']} GPU {node['accelerator']}".rstrip() if node["gpus"] else "no GPU"
            print(f"  {node['node_ip']:15} {'head' if node['head'] else 'worker':6} {node['cpus']:>3} CPUs  "
                  f"{gpus:16} {node['memory_gib']:>7.1f} GiB")
        if args.model:
            found = ray_cluster.plan_on_cluster(address, args.model, max_model_len=args.max_model_len, gpu=args.gpu)
            print(found["advice"])
            if "plan" in found:
                print(found["plan"])
        return None
