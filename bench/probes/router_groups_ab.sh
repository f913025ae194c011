#!/usr/bin/env bash
# Row 149 (session 34): decode router tasks of two token groups (`router_groups.patch`) against
# HEAD, and against itself with one group a task (FLASHMOE_BENCH_ROUTER_GROUPS=1, variant env1),
# at the decode T where the rule differs. The generic harness is patch_ab.sh; PATCHES,
# ENV_VARIANTS, TOKENS, FILTER and TESTS given here pass through to it.
set -uo pipefail
PATCHES=${PATCHES:-bench/probes/router_groups.patch} \
  ENV_VARIANTS=${ENV_VARIANTS-FLASHMOE_BENCH_ROUTER_GROUPS=1} bash bench/probes/patch_ab.sh
