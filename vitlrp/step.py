"""One step of an explaining script, sharded over torchrun's processes (a single process otherwise): the device,
each rank's share of the images, the output folder (rank 0 holds it), the gathered parts and the exit status.

:func:`run_step` is the skeleton every sharded script shares: ``prepare`` (read the inputs: errors leave no
folder), take the folder, ``work`` on this rank's shard, gather every rank's part on rank 0, ``finish`` (merge,
write, report) there.
"""
from contextlib import ExitStack
from dataclasses import dataclass

from .runfolder import RunFolder
from .runtime import Distributed, resolve_device


@dataclass(frozen=True)
class Step:
    """A step's device setting, its output folder (``folder_name``: what the script calls it), the names it writes
    there and the files removed when it takes the folder; ``shared_folder``: every rank writes into the folder (the
    others wait until rank 0 has taken it)."""

    device: str
    output_dir: str
    folder_name: str
    output_names: tuple
    clear_first: tuple = ()
    shared_folder: bool = False


@dataclass
class StepState:
    """What a running step's callbacks read: the :class:`~vitlrp.runtime.Distributed` ranks, this rank's device,
    rank 0's :class:`~vitlrp.runfolder.RunFolder` (None elsewhere) and what ``prepare`` returned (``data``)."""

    dist: Distributed
    device: object
    run: object = None
    data: object = None

    @property
    def is_main(self):
        return self.dist.is_main

    def shard(self, items):
        """This rank's share of ``items``."""
        return self.dist.shard(items)


def run_step(step, prepare, work, finish):
    """Run a sharded step: ``prepare(state)`` → ``state.data``, then with the folder taken ``work(state)`` → this
    rank's part, gathered on rank 0, where ``finish(state, parts)`` (the parts of every rank, in rank order) writes
    the outputs and returns the exit status (0 on the other ranks)."""
    dist = Distributed()
    state = StepState(dist, dist.init(resolve_device(step.device)))
    try:
        state.data = prepare(state)
        with ExitStack() as folder:
            if dist.is_main:
                state.run = folder.enter_context(RunFolder(step.output_dir, step.folder_name, step.output_names,
                                                           step.clear_first))
            if step.shared_folder:
                dist.barrier()  # the other ranks write into the folder only once rank 0 has taken it
            parts = dist.all_gather_objects(work(state))
            status = finish(state, parts) if dist.is_main else 0
    finally:
        dist.close()
    return status


def in_sample_order(items, indices):
    """``items`` (dicts with ``sample_idx``) gathered from every rank, in the order of ``indices`` whatever the
    shards."""
    order = {i: k for k, i in enumerate(indices)}
    return sorted(items, key=lambda r: order[r["sample_idx"]])
