"""The keep rule: a run's status from the runs before it, with the seed noise measured, never guessed.

    uv run python tests/bench/bench_keep_rule.py      # this rule against upstream's greedy one, simulated

A configuration is model.json + train.py (their hash: the run's `fingerprint`); the seed (`--seed`) is not part
of it. Within one comparability key:

- noise floor: sigma, the pooled standard deviation of val_bpb within configurations run under more than one
  seed (dof = the sum over them of runs - 1);
- best configuration: the accepted one (status baseline or keep) with the lowest mean val_bpb;
- the comparison with the best: the difference of the means, its standard error sigma x sqrt(1/n + 1/n_best);
  or, where the ledger shows that seeds move configurations together (the spread of paired differences on shared
  seeds under PAIRED_MAX_RATIO of the unpaired one, on PAIRED_MIN_DOF dof or more), the mean of the paired
  differences on the seeds both ran (common random numbers: next_seed runs the best's seeds first);
- margin: KEEP_Z/1.96 x t(dof) x the standard error (t: one-sided 97.5%); no floor yet: no gain is kept.
- host speed: under a time budget (no max_steps) the runs' host-speed probes (harness/speed.py) are compared;
  a candidate whose runs saw a host faster than the best's by more than SPEED_TOLERANCE is compared only with
  the best's runs at comparable speed, and with none it is not kept: `next:` asks for a control run of the best.

A new scored run, its configuration's scored runs (this one included) n with mean m:
- the first of the key: baseline; the same configuration and seed again: rerun (not judged; out of every mean);
- a copy of the best (its val_bpb bit for bit under each seed it ran: the same model): discard at once;
- a configuration already accepted: repeat (its mean and the floor are updated, nothing is decided);
- gain beyond the margin and n >= MIN_RUNS_TO_KEEP, the host comparable: keep;
- better than the best and n < MAX_RUNS_PER_CONFIG: confirm (re-run this commit with another seed); else discard.
A `pruned` run (stopped early by harness/prune.py) is never scored: it is a discard that cost less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.stats import chi2_lower_05, f_upper_005, t_quantile

ACCEPTED = ("baseline", "keep")
SCORED = ("baseline", "keep", "confirm", "discard", "repeat")     # runs whose val_bpb enters a configuration's mean
UNSCORED = ("crash", "interrupted", "pruned")     # runs recorded without a val_bpb (upstream wrote 0.0): never a best
FIRST_SEED = 42                 # train.py's default --seed
VAL_DIGITS = 6                  # val_bpb's decimals in results.tsv: copies are compared at them


# ---------------------------------------------------------------------------
# The rule's parameters, in one place: chosen by tests/bench/bench_keep_rule.py on the measured noise model
# (docs/records/2026-12-07_keep-rule-paired/): at most 5% false keeps on every mix simulated
# ---------------------------------------------------------------------------

# Every keep rests on three seeds, and a configuration gets at most four: keeping on one run let a neutral edit
# through after a lucky draw, and the lucky mean then stood as the bar for every later edit.
MIN_RUNS_TO_KEEP, MAX_RUNS_PER_CONFIG = 3, 4
KEEP_Z = 2.3                    # the margin: KEEP_Z x t(dof)/1.96 x the standard error (one-sided ~99%): the
                                # sequential looks of up to four seeds spend more than one test's error
CONFIRM_Z = 0.5                 # another seed while the gain exceeds CONFIRM_Z x the standard error: a run only
                                # slightly better than the best is discarded at once (a sequential early discard)
PAIRED_MIN_DOF = 4              # paired differences decide once their own spread rests on this many dof, and the
PAIRED_MAX_RATIO = 0.6          # upper 95% bound of their variance is under this share of the unpaired one (a
                                # bound, not the estimate: choosing on a small estimate would choose its luck)
PAIRED_ACCEPTED = 16            # the paired spread is pooled against the latest accepted configurations only: its
                                # cost stays linear in the ledger (a campaign of 10,000 rows), its estimate recent
UNSTABLE_MIN_DOF = 4            # dof the others' spread needs before any configuration's is called unstable
SPEED_TOLERANCE = 0.10          # host-speed probes further apart than this share are not comparable (the probe
                                # itself spreads 4.6% on an idle H100: docs/records/2026-12-07_noise-model-h100)


# ---------------------------------------------------------------------------
# Configurations and the noise floor
# ---------------------------------------------------------------------------

@dataclass
class Config:
    """One configuration's scored runs within a key."""
    fingerprint: str
    values: list            # val_bpb of its scored runs, rerun excluded
    seeds: list
    accepted: bool          # has a baseline or keep run
    first_line: int
    speeds: list = field(default_factory=list)      # host-speed probe of each run (None: not measured)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    def by_seed(self) -> dict:
        return {s: v for s, v in zip(self.seeds, self.values) if s is not None}


@dataclass
class Standing:
    """What the ledger says about one key: configurations, the noise floor, the best configuration."""
    configs: dict           # fingerprint -> Config
    sigma: float | None     # None until some configuration was run under two seeds
    dof: int
    best: Config | None
    copies: set = field(default_factory=set)      # copy_pairs(configs)
    unstable: set = field(default_factory=set)    # unstable_configs(): left out of both floors
    pooled: set = field(default_factory=set)      # the configurations sigma pools (no later copy, none unstable)

    def margin(self, n: int) -> float:
        """The gain a configuration of n runs must show over the best (unpaired): judge()'s margin."""
        if self.sigma is None or self.best is None:
            return math.inf
        return KEEP_Z / 1.96 * t_quantile(self.dof) * self.sigma * math.sqrt(1 / n + 1 / len(self.best.values))


def is_scored(row: dict) -> bool:
    """A run whose val_bpb enters its configuration's mean (a crash or an interrupted run never does)."""
    return row.get("status") in SCORED and row.get("val_bpb") is not None      # a run not yet recorded: no


def run_fingerprint(row: dict, index: dict) -> str:
    """A run's configuration: its fingerprint, or (ledgers without an index entry) a name of its own."""
    return index.get(row["run_id"], {}).get("fingerprint") or f"run:{row['run_id']}"


def standing(rows: list[dict], index: dict, key: str, candidate: str | None = None) -> Standing:
    configs: dict = {}
    seen = set()
    for r in rows:
        if r["comparability_key"] != key or not is_scored(r):
            continue
        fp, entry = run_fingerprint(r, index), index.get(r["run_id"], {})
        seed = entry.get("seed")
        if seed is not None and (fp, seed) in seen:
            continue
        seen.add((fp, seed))
        c = configs.setdefault(fp, Config(fp, [], [], False, r.get("line", 0)))
        c.values.append(r["val_bpb"])
        c.seeds.append(seed)
        c.speeds.append(entry.get("host_speed"))
        c.accepted = c.accepted or r["status"] in ACCEPTED
    copies = copy_pairs(configs)
    later = {c for c, o in copies if configs[o].first_line < configs[c].first_line}
    accepted = [c for c in configs.values() if c.accepted]
    best = min(accepted, key=lambda c: (c.mean, c.first_line)) if accepted else None
    floor = [c for c in configs.values() if c.fingerprint not in later]
    unstable = unstable_configs(floor, {c.fingerprint for c in accepted} | {candidate})
    floor = [c for c in floor if c.fingerprint not in unstable]
    dof = sum(len(c.values) - 1 for c in floor)
    ss = sum(sum((v - c.mean) ** 2 for v in c.values) for c in floor)
    sigma = math.sqrt(ss / dof) if dof > 0 else None
    return Standing(configs, sigma, dof, best, copies, unstable, {c.fingerprint for c in floor if len(c.values) > 1})


def unstable_configs(floor: list, exempt: set) -> set:
    """Configurations whose seeds spread beyond everyone else's at 99.5% (an F test of their variance against the
    others' pooled one, itself on UNSTABLE_MIN_DOF dof or more): an edit that made training erratic (the CPU
    trial: one of 0.059 among spreads of 0.01 kept a 4-of-4-seeds gain out). That spread is its own, not the seed
    noise all share: it leaves both floors. Accepted configurations and the one being judged always stay."""
    ss = {c.fingerprint: sum((v - c.mean) ** 2 for v in c.values) for c in floor}
    dof = {c.fingerprint: len(c.values) - 1 for c in floor}
    total_ss, total_dof = sum(ss.values()), sum(dof.values())
    out = set()
    for fp, d in dof.items():
        rest_ss, rest_dof = total_ss - ss[fp], total_dof - d
        if d >= 1 and fp not in exempt and rest_dof >= UNSTABLE_MIN_DOF and rest_ss > 0 \
                and ss[fp] / d > f_upper_005(d, rest_dof) * rest_ss / rest_dof:
            out.add(fp)
    return out


def copy_pairs(configs: dict) -> set:
    """(c, other): configuration c reproduced `other` bit for bit on every seed it ran (an edit that trains the same
    model: an unused model.json key, a comment): its runs measure nothing new, and counted again they would narrow
    the floors. Found through the (seed, val_bpb) pairs configurations share: linear in runs, not in their pairs."""
    having: dict = {}
    for c in configs.values():
        for pair in c.by_seed().items():
            having.setdefault(pair, set()).add(c.fingerprint)
    out = set()
    for c in configs.values():
        pairs = c.by_seed()
        if pairs and len(pairs) == len(c.values):
            out.update((c.fingerprint, o) for o in set.intersection(*(having[p] for p in pairs.items()))
                       if o != c.fingerprint)
    return out


def paired_floor(st: Standing) -> tuple[float | None, int]:
    """(variance, dof) of paired differences: for every configuration against every accepted one, its val_bpb
    minus theirs on each seed both ran, deviations from that pair's mean difference pooled. (None, 0) when no
    pair shares two seeds."""
    ss, dof = 0.0, 0
    seeded = {c.fingerprint: c.by_seed() for c in st.configs.values()}
    multi = [c for c in st.configs.values() if len(seeded[c.fingerprint]) > 1      # one seed pairs nothing
             and c.fingerprint not in st.unstable]
    for a in sorted((c for c in multi if c.accepted), key=lambda c: c.first_line)[-PAIRED_ACCEPTED:]:
        va = seeded[a.fingerprint]
        for c in multi:
            if c is a or (c.accepted and c.first_line < a.first_line) or (c.fingerprint, a.fingerprint) in st.copies \
                    or (a.fingerprint, c.fingerprint) in st.copies:
                continue                                            # each accepted pair once; copies measure nothing
            d = [v - va[s] for s, v in seeded[c.fingerprint].items() if s in va]
            if len(d) > 1:
                m = sum(d) / len(d)
                ss += sum((x - m) ** 2 for x in d)
                dof += len(d) - 1
    return (ss / dof if dof else None), dof


def paired_is_tighter(var_d: float | None, dof_d: int, sigma: float) -> bool:
    """True when the paired differences' variance is, at 95% confidence, under PAIRED_MAX_RATIO of the unpaired
    one (2 sigma^2): the seeds move configurations together, measured, not hoped."""
    if var_d is None or dof_d < PAIRED_MIN_DOF:
        return False
    return var_d * dof_d / chi2_lower_05(dof_d) < PAIRED_MAX_RATIO * 2 * sigma ** 2


# ---------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------

@dataclass
class Decision:
    """A run's status and the numbers behind it (stored in its index entry as `decision`; memory.md renders it)."""
    status: str
    reason: str = ""
    n: int = 0                      # scored runs of the configuration, this one included
    mean: float | None = None       # their mean val_bpb
    best_mean: float | None = None  # the best configuration's mean (over the runs compared with)
    best_runs: int = 0
    diff: float | None = None       # the difference compared (mean - best, or the paired mean difference)
    se_factor: float | None = None  # its standard error in units of sigma
    sigma: float | None = None
    dof: int = 0
    paired: bool = False
    margin: float | None = None     # the gain needed: t(dof) x the standard error
    control: bool = False           # the host ran faster than during the best's runs: a control run is asked for

    def numbers(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("status",)}


def _compare(st: Standing, values: list, seeds: list, speeds: list, timed: bool) -> tuple:
    """(diff, se factor, dof, paired, best's runs compared, control needed) of a candidate against st.best."""
    best_vals, best_seeds, best_speeds = st.best.values, st.best.seeds, st.best.speeds
    control = False
    mine = [x for x in speeds if x is not None]
    if timed and mine and any(x is not None for x in best_speeds):
        fast = sum(mine) / len(mine)
        ref = [x for x in best_speeds if x is not None]
        if fast > (1 + SPEED_TOLERANCE) * sum(ref) / len(ref):      # compare with the best's runs at this speed only
            keep = [i for i, x in enumerate(best_speeds) if x is not None and x * (1 + SPEED_TOLERANCE) >= fast]
            control = not keep
            best_vals = [best_vals[i] for i in keep] or best_vals
            best_seeds = [best_seeds[i] for i in keep] or best_seeds
    var_d, dof_d = paired_floor(st)
    shared = [s for s in seeds if s is not None and s in best_seeds]
    if shared and paired_is_tighter(var_d, dof_d, st.sigma):
        mine_by, best_by = dict(zip(seeds, values)), dict(zip(best_seeds, best_vals))
        diff = sum(mine_by[s] - best_by[s] for s in shared) / len(shared)
        return diff, math.sqrt(var_d / len(shared)) / st.sigma, dof_d, True, len(shared), control
    diff = sum(values) / len(values) - sum(best_vals) / len(best_vals)
    return diff, math.sqrt(1 / len(values) + 1 / len(best_vals)), st.dof, False, len(best_vals), control


_NEW = "\0new"          # the run being decided, while it is not in the ledger yet


def judge(rows: list[dict], index: dict, key: str, fingerprint: str, seed, val_bpb: float | None,
          host_speed: float | None = None, timed: bool = True) -> Decision:
    """The status of a new run (not yet in rows) of `fingerprint` under `seed` with this val_bpb, and why.
    timed: the key's runs end on seconds (no max_steps), so the host's speed moves val_bpb."""
    if val_bpb is None or not math.isfinite(val_bpb):
        return Decision("crash", "no val_bpb")
    st = standing(rows, index, key)
    if not st.configs:
        return Decision("baseline", "the key's first scored run", n=1, mean=val_bpb)
    mine = st.configs.get(fingerprint)
    if mine is not None and seed is not None and seed in mine.seeds:
        return Decision("rerun", f"this configuration already ran under seed {seed}")
    if mine is not None and mine.accepted:
        return Decision("repeat", "another seed of an accepted configuration: its mean and the floor are updated")
    values, seeds = (mine.values if mine else []) + [val_bpb], (mine.seeds if mine else []) + [seed]
    speeds = (mine.speeds if mine else []) + [host_speed]
    n, mean = len(values), sum(values) / len(values)
    new = {"run_id": _NEW, "comparability_key": key, "status": "discard", "val_bpb": val_bpb, "line": math.inf}
    floor = standing(rows + [new], {**index, _NEW: {"fingerprint": fingerprint, "seed": seed,
                                                    "host_speed": host_speed}}, key, candidate=fingerprint)
    floor.best = st.best
    out = Decision("discard", n=n, mean=mean, best_mean=st.best.mean, best_runs=len(st.best.values))
    same = st.best.by_seed()
    if all(s is not None and s in same and round(same[s], VAL_DIGITS) == round(v, VAL_DIGITS)
           for s, v in zip(seeds, values)):                                       # it trains the best's model
        out.diff, out.reason = 0.0, (f"a copy of the best: seed {seed} gave its val_bpb bit for bit (an edit that "
                                     f"trains the same model, e.g. an unused key or a comment): no gain possible")
        return out
    if floor.sigma is None:
        out.status = "confirm" if mean < st.best.mean and n < MAX_RUNS_PER_CONFIG else "discard"
        out.reason = "no noise floor yet: nothing is kept until a configuration has run under two seeds"
        return out
    diff, factor, dof, paired, best_runs, control = _compare(floor, values, seeds, speeds, timed)
    out.__dict__.update(diff=diff, se_factor=factor, sigma=floor.sigma, dof=dof, paired=paired, best_runs=best_runs,
                        best_mean=mean - diff, margin=KEEP_Z / 1.96 * t_quantile(dof) * floor.sigma * factor)
    if -diff > out.margin and n >= MIN_RUNS_TO_KEEP and not control:
        out.status = "keep"
        out.reason = f"gain {-diff:.6f} beyond the margin {out.margin:.6f} over {n} seeds"
    elif -diff > CONFIRM_Z * floor.sigma * factor and n < MAX_RUNS_PER_CONFIG and not (
            paired and n >= MIN_RUNS_TO_KEEP and all(s in seeds for s in st.best.seeds)):
        # (paired, with the seeds a keep needs: another seed the best never ran would not change the comparison)
        out.status, out.control = "confirm", control and -diff > out.margin and n >= MIN_RUNS_TO_KEEP
        out.reason = (f"gain {-diff:.6f}, margin {out.margin:.6f} over {n} seed{'s' * (n > 1)}" + (
            "; !! the host ran faster during this configuration's runs than during every run of the best: not a "
            "keep until the best runs at this speed (a control run)" if out.control else ""))
    else:
        out.reason = (f"no gain over the best ({diff:+.6f})" if diff >= 0 else
                      f"gain {-diff:.6f} under {CONFIRM_Z} standard errors ({CONFIRM_Z * floor.sigma * factor:.6f})"
                      if -diff <= CONFIRM_Z * floor.sigma * factor else
                      f"gain {-diff:.6f} inside the margin {out.margin:.6f} after {n} seeds" + (
                          ", every seed the best ran" if paired else ", the most a configuration gets"))
    return out


def decide(rows: list[dict], index: dict, key: str, fingerprint: str, seed, val_bpb: float | None) -> str:
    return judge(rows, index, key, fingerprint, seed, val_bpb).status          # the status alone


def decide_entry(rows: list[dict], index: dict, row: dict, entry: dict, status: str | None) -> str:
    """The status of a run about to be appended (both ledger backends call this under their lock): `status` when
    given (a crash, an interrupt, a pruned run), else judge()'s; the decision's numbers go into `entry`."""
    if status is not None:
        return status
    timed = not (entry.get("key_parts") or {}).get("max_steps")
    d = judge(rows, index, row["comparability_key"], entry.get("fingerprint"), entry.get("seed"), row.get("val_bpb"),
              entry.get("host_speed"), timed)
    entry["decision"] = dict(d.numbers(), status=d.status)
    return d.status


def next_seed(rows: list[dict], index: dict, key: str, fingerprint: str, st: Standing | None = None) -> int:
    """The seed this configuration runs next: the best configuration's seeds first, in their order (so that
    comparisons can pair), then the smallest seed from FIRST_SEED up that it has not run under."""
    used = {index.get(r["run_id"], {}).get("seed") for r in rows
            if r["comparability_key"] == key and run_fingerprint(r, index) == fingerprint}
    st = st or standing(rows, index, key)
    for s in (st.best.seeds if st.best else []):
        if s is not None and s not in used:
            return s
    seed = FIRST_SEED
    while seed in used:
        seed += 1
    return seed
