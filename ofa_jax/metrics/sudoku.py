"""Sudoku solved rate (OFASys `solved_acc`) for grids in OFASys text form.

A grid is written row by row, rows separated by `|` and cells by `:`, e.g. the
4x4 `1 : 2 : 3 : 4 | 3 : 4 : 1 : 2 | 2 : 1 : 4 : 3 | 4 : 3 : 2 : 1`. In a puzzle,
empty cells are `0`, `_`, `.` or nothing. Any n x n grid with n a square works
(4x4 for the demo, 9x9 for Kaggle's).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from ofa_jax.metrics.common import as_text, check_pairs

Grid = list[list[int]]
_BLANKS = ("", "0", "_", ".")


def parse_grid(text: Any) -> Optional[Grid]:
  """The grid as ints (0 = empty), or None when it is not a square n x n grid."""
  rows = [row.split(":") for row in as_text(text).strip().split("|")]
  n = len(rows)
  if math.isqrt(n) ** 2 != n or any(len(row) != n for row in rows):
    return None
  grid = []
  for row in rows:
    cells = []
    for cell in (c.strip() for c in row):
      if cell in _BLANKS:
        cells.append(0)
      elif cell.isdigit() and 1 <= int(cell) <= n:
        cells.append(int(cell))
      else:
        return None
    grid.append(cells)
  return grid


def _units(n: int) -> list[list[tuple[int, int]]]:
  b = math.isqrt(n)
  rows = [[(r, c) for c in range(n)] for r in range(n)]
  cols = [[(r, c) for r in range(n)] for c in range(n)]
  boxes = [[(br + r, bc + c) for r in range(b) for c in range(b)]
           for br in range(0, n, b) for bc in range(0, n, b)]
  return rows + cols + boxes


def is_solution(grid: Optional[Grid], puzzle: Optional[Grid] = None) -> bool:
  """A complete grid whose rows, columns and boxes hold 1..n once each, and
  that keeps every given of `puzzle`."""
  if grid is None:
    return False
  n = len(grid)
  full = set(range(1, n + 1))
  if any({grid[r][c] for r, c in unit} != full for unit in _units(n)):
    return False
  if puzzle is not None:
    if len(puzzle) != n:
      return False
    return all(p in (0, g) for prow, grow in zip(puzzle, grid)
               for p, g in zip(prow, grow))
  return True


def _target_parts(target: Any, i: int) -> tuple[Optional[Grid], Optional[Grid]]:
  """(puzzle, solution) of a target: a solution string or a mapping."""
  if isinstance(target, Mapping):
    puzzle = target.get("puzzle")
    solution = target.get("solution")
  else:
    puzzle, solution = None, target
  parsed = [None if x is None else parse_grid(x) for x in (puzzle, solution)]
  for name, raw, grid in zip(("puzzle", "solution"), (puzzle, solution),
                             parsed):
    if raw is not None and grid is None:
      raise ValueError(f"solved_rate: target {i} has a malformed {name} "
                       f"{raw!r}")
  if parsed[0] is None and parsed[1] is None:
    raise ValueError(f"solved_rate: target {i} has neither puzzle nor solution")
  return parsed[0], parsed[1]


def solved_rate(targets: Sequence[Any], predictions: Sequence[Any]
                ) -> dict[str, float]:
  """Percent of predicted grids that solve their puzzle, and cell accuracy.

  Args:
    targets: per example, the solution grid text, or a mapping with "puzzle"
      (the givens) and/or "solution". With a puzzle, any valid grid that keeps
      the givens counts as solved (a puzzle may have several solutions);
      without one, the grid must equal the solution.
    predictions: per example, the predicted grid text.

  Returns:
    {"solved": ..., "cell_accuracy": ...}; cell accuracy compares with the
    solution where the target has one (100 * matching cells / cells).
  """
  targets, predictions = check_pairs(targets, predictions, "solved_rate")
  solved = cells = cell_hits = 0
  for i, (target, prediction) in enumerate(zip(targets, predictions)):
    puzzle, solution = _target_parts(target, i)
    grid = parse_grid(prediction)
    if puzzle is not None:
      solved += is_solution(grid, puzzle)
    else:
      solved += grid == solution and is_solution(grid)
    if solution is not None:
      n = len(solution)
      cells += n * n
      if grid is not None and len(grid) == n:
        cell_hits += sum(g == s for grow, srow in zip(grid, solution)
                         for g, s in zip(grow, srow))
  out = {"solved": 100.0 * solved / len(targets)}
  if cells:
    out["cell_accuracy"] = 100.0 * cell_hits / cells
  return out


def count_solutions(puzzle: Grid, limit: int = 10**6) -> int:
  """Number of complete grids that keep the givens (backtracking, up to limit)."""
  n = len(puzzle)
  b = math.isqrt(n)
  grid = [row[:] for row in puzzle]
  empty = [(r, c) for r in range(n) for c in range(n) if grid[r][c] == 0]

  def fits(r: int, c: int, v: int) -> bool:
    br, bc = r - r % b, c - c % b
    return (all(grid[r][k] != v for k in range(n))
            and all(grid[k][c] != v for k in range(n))
            and all(grid[br + i][bc + j] != v
                    for i in range(b) for j in range(b)))

  def count(k: int) -> int:
    if k == len(empty):
      return 1
    r, c = empty[k]
    total = 0
    for v in range(1, n + 1):
      if fits(r, c, v):
        grid[r][c] = v
        total += count(k + 1)
        grid[r][c] = 0
        if total >= limit:
          break
    return total

  if any(grid[r][c] and not _given_ok(grid, r, c)
         for r in range(n) for c in range(n)):
    return 0  # two givens already clash
  return count(0)


def _given_ok(grid: Grid, r: int, c: int) -> bool:
  v, grid[r][c] = grid[r][c], 0
  n, b = len(grid), math.isqrt(len(grid))
  br, bc = r - r % b, c - c % b
  ok = (all(grid[r][k] != v for k in range(n))
        and all(grid[k][c] != v for k in range(n))
        and all(grid[br + i][bc + j] != v for i in range(b) for j in range(b)))
  grid[r][c] = v
  return ok


def chance_baseline(puzzles: Sequence[Any]) -> float:
  """Expected solved rate of filling the empty cells uniformly at random.

  Per puzzle: (number of solutions) / n ** (number of empty cells).
  """
  total = 0.0
  puzzles = list(puzzles)
  if not puzzles:
    raise ValueError("chance_baseline: no puzzles")
  for i, text in enumerate(puzzles):
    puzzle = parse_grid(text)
    if puzzle is None:
      raise ValueError(f"chance_baseline: puzzle {i} is malformed: {text!r}")
    n = len(puzzle)
    blanks = sum(v == 0 for row in puzzle for v in row)
    total += count_solutions(puzzle) / float(n) ** blanks
  return 100.0 * total / len(puzzles)
