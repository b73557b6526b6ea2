// Host-side specification of common/tile_order.h, compiled and run by tests/test_tile_order.py
// (nvcc, no GPU needed).  For many grid shapes the launch order must be a permutation of the
// (rank, pair) tiles in which every pair's tiles come longest first; the leading pairs come one
// after another, each as one run of tiles; the last group of pairs comes rank by rank and holds at
// least two waves of tiles (or every pair).
#include <cstdio>
#include <vector>

#include "common/tile_order.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what, int blocks, int pairs, int slots) {
  if (ok) return;
  if (++failures <= 20) std::printf("FAIL %s: blocks=%d pairs=%d slots=%d\n", what, blocks, pairs, slots);
}

void check(int blocks, int pairs, int slots) {
  const fa::TileOrder order = fa::longest_first_tail(blocks, pairs, slots);
  expect(order.enabled(), "enabled", blocks, pairs, slots);
  expect(order.total() == blocks * pairs, "total", blocks, pairs, slots);
  const long long two_waves = (2LL * slots + blocks - 1) / blocks;
  const int want_last = int(two_waves < pairs ? (two_waves > 0 ? two_waves : 1) : pairs);
  expect(order.last_pairs >= want_last, "the last group holds two waves of tiles", blocks, pairs, slots);
  const int lead = pairs - order.last_pairs;

  std::vector<int> seen(size_t(blocks) * pairs, 0), next_rank(pairs, 0);
  int tail_rank = 0;
  for (int t = 0; t < order.total(); ++t) {
    int rank = -1, pair = -1;
    order.tile(t, rank, pair);
    if (!(rank >= 0 && rank < blocks && pair >= 0 && pair < pairs)) {
      expect(false, "tile in range", blocks, pairs, slots);
      return;
    }
    ++seen[size_t(pair) * blocks + rank];
    expect(rank == next_rank[pair]++, "a pair's tiles come longest first", blocks, pairs, slots);
    if (t < lead * blocks) {
      expect(pair == t / blocks, "leading pairs come one after another", blocks, pairs, slots);
    } else {
      expect(pair >= lead, "the last group holds the last pairs", blocks, pairs, slots);
      expect(rank >= tail_rank, "the last group comes rank by rank", blocks, pairs, slots);
      tail_rank = rank;
    }
  }
  for (int c : seen) expect(c == 1, "every tile exactly once", blocks, pairs, slots);
}

}  // namespace

int main() {
  int configs = 0;
  for (int blocks : {1, 2, 3, 4, 7, 16, 33, 64, 128, 300})
    for (int pairs : {1, 2, 5, 16, 31, 64, 128, 257, 1000})
      for (int slots : {1, 132, 264}) {
        check(blocks, pairs, slots);
        ++configs;
      }
  if (fa::TileOrder{}.enabled()) ++failures, std::printf("FAIL a default TileOrder is enabled\n");
  std::printf("%s: %d configurations, %d failures\n", failures ? "FAILED" : "ok", configs, failures);
  return failures ? 1 : 0;
}
