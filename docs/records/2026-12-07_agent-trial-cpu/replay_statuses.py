import sys; sys.path.insert(0,'/work/main')
from harness import ledger, decide
from pathlib import Path
res, ses = Path(sys.argv[1]), Path(sys.argv[2])
rows = ledger.read_ledger(res); index = ledger.read_index(ses)
done = []
for r in rows:
    e = index.get(r['run_id'], {})
    timed = not (e.get('key_parts') or {}).get('max_steps')
    d = decide.judge(done, index, r['comparability_key'], e.get('fingerprint'), e.get('seed'), r['val_bpb'], e.get('host_speed'), timed)
    done.append(dict(r, status=d.status))
    print(f"{r['status']:>8} -> {d.status:<8} seed {e.get('seed')} {r['val_bpb']:.6f} {r['description'][:50]} | {d.reason[:90]}")
