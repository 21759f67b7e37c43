"""The fixed harness behind prepare.py and train.py, one module per job, in two groups and one bridge.

    uv run prepare.py --check        # loads config -> settings -> hardware and prints what was decided

Owned by the user, read-only for the agent. Imports run one way, down this list (a module imports only modules
above it); train.py imports only the bridge, harness.session.

Runtime: what a run computes (configs, the machine, the data, the fixed metric)
  config        ground.json / model.json -> frozen, typed objects; ConfigError (one line, exit 2)
  settings      the run's effective constants: mode, sequence length, budget, eval size, caps
  util          atomic writes, file hashes, a network probe
  fused/        GPU kernels behind custom ops (cuDNN and FA4 attention, softcap loss, rope + norm, ReLU^2 MLP)
  rocm          PLATFORM's rows for AMD GPUs: from torch.version.hip and the gfx architecture
  hardware      PLATFORM: device, dtype, attention backend, fused kernels, compile, peak FLOPs
  cards         the tokens/s to expect of a card class, measured or said to be an estimate
  attention     one attention call over the backends PLATFORM chooses from
  distributed   torchrun: process group, gradient all-reduce, host-side agreement
  clock         step timing for the budget (monotonic), without a host sync inside a step
  speed         the host-speed probe: a fixed matmul timed before the budget
  corpus        the builtin offline corpus: the environment's Python sources and docs, filtered, deduplicated
  sources       data: climbmix download, local folder, the builtin corpus; the manifest
  tokenizer     BPE training (rustbpe) served by tiktoken; token_bytes; the token cache
  dataloader    best-fit packing of documents into rows, prefetched
  evaluate      evaluate_bpb: the fixed metric (do not change)
  fit           the largest device_batch_size the card holds, by a forward/backward probe before the budget
  warm_eval     the eval's graph, compiled by a second process while the run trains

Bookkeeping: what a run means (the keep rule, the ledger, the digest)
  checked       every harness-written file read through one check: a damaged entry set aside, named in one line
  stats         the quantiles the keep rule reads: Student's t, chi-square
  errors        what kind of crash a run's error is (a field of its entry)
  decide        the keep rule: configurations' means over seeds, the noise floor, the margin, paired seeds
  lineage       which run each run built on, the commit to return to, the commands a run prints
  identity      what identifies a run: commit, configuration fingerprint, host, the comparability key
  ledger        results.tsv: append-only under a file lock, one strict parser
  pgconn        the shared database's tables, its connection (URL kept secret, retries) and the local queue
  database      the shared ledger on PostgreSQL for agents on several hosts; local mirror and queue
  plot          sessions/progress.png: the progress plot, redrawn after every run; val gain against held-out gain
  heldout       the human's held-out score of baseline and kept runs: stored, plotted, never shown to the agent
  digest        the values memory.md and `next:` read from the ledger, computed once
  memory        sessions/memory.md: the bounded digest regenerated after every run, one renderer per section
  nextstep      the `next:` line: the protocol's next command after a run
  prune         early stop: a run whose loss curve is clearly worse than the best's at the same point
  liveclaim     a run's claim sent again with its curve so far, for the live view of other hosts
  webdata       the live view's values: every run as columns, one run's story, the runs in flight
  web           the live view: the ledger in a browser, served read-only (prepare.py --serve)
  record        a run's log, JSON record and ledger row; crashes and signals recorded
  recover       a run killed outright, recorded afterwards from its log

The bridge, and the command line
  session       the run train.py opens: set-up, the budget's loop, the metric, the record, the exit
  cli           `uv run prepare.py ...`
"""
