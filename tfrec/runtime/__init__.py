"""Runtime stages a run descends through: route, batch, lane, runner."""
