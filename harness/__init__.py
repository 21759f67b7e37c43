"""The fixed harness behind prepare.py, one module per job, in the order data flows through them.

    uv run prepare.py --check        # loads config -> settings -> hardware and prints what was decided

Owned by the user, read-only for the agent; train.py imports from it. Imports run one way, down
this list (a module imports only modules above it):

  config        ground.json / model.json -> frozen, typed objects; ConfigError (one line, exit 2)
  settings      the run's effective constants: mode, sequence length, budget, eval size, caps
  util          atomic writes, file hashes, a network probe
  fused/        GPU kernels behind custom ops (cuDNN and FA4 attention, softcap loss, rope + norm, ReLU^2 MLP)
  hardware      PLATFORM: device, dtype, attention backend, fused kernels, compile, peak FLOPs
  attention     one attention call over the backends PLATFORM chooses from
  distributed   torchrun: process group, gradient all-reduce, host-side agreement
  clock         step timing for the budget, without a host sync inside a step
  corpus        the builtin offline corpus: the environment's Python sources and docs, filtered, deduplicated
  sources       data: climbmix download, local folder, the builtin corpus; the manifest
  tokenizer     BPE training (rustbpe) served by tiktoken; token_bytes; the token cache
  dataloader    best-fit packing of documents into rows, prefetched
  evaluate      evaluate_bpb: the fixed metric (do not change)
  warm_eval     the eval's graph, compiled by a second process while the run trains
  decide        the keep rule: configurations' means over seeds, the noise floor, the margin
  identity      what identifies a run: commit, configuration fingerprint, the comparability key and its parts
  ledger        results.tsv: append-only under a file lock, one strict parser, the keep rule
  database      the shared ledger on PostgreSQL for agents on several hosts; local mirror and queue
  plot          sessions/progress.png: the progress plot, redrawn after every run
  memory        sessions/memory.md: the bounded digest regenerated after every run; the `next:` command
  record        a run's log, JSON record and ledger row; crashes and signals recorded
  cli           `uv run prepare.py ...`
"""
