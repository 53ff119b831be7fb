#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The process's two clocks: the monotonic one for intervals and deadlines
// (it never jumps), the wall clock for what crosses machines (expiry times).

/// Nanoseconds on the monotonic clock (the clock `ConditionLock` waits use).
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Milliseconds on the monotonic clock.
public func monotonicMillis() -> Int64 {
    Int64(monotonicNanos() / 1_000_000)
}

/// Nanoseconds since 1970 on the wall clock.
public func wallClockNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Milliseconds since 1970 on the wall clock.
public func wallClockMillis() -> Int64 {
    Int64(wallClockNanos() / 1_000_000)
}
