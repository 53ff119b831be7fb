import Synchronization

/// Spreads accepted connections over a server's event loops: each goes to the loop
/// with the fewest open.
///
/// All loops wait on one listening socket (EPOLLEXCLUSIVE), and the kernel wakes one
/// that is waiting — the idle one. A burst of connections (wrk's 50, a balancer's
/// pool) lands on whichever loop was idle when it came, and stays there: measured,
/// all 50 of wrk's connections on one of a node's two loops, which ran at one core
/// while the other slept (0.80× nginx, whose two workers split them). So the loop
/// that accepts calls `handOff`: when another loop has fewer, the descriptor goes to
/// that loop's inbox and the loop is woken, and it `adopt`s what it finds there. The cost
/// is one wake-up per connection, at connect time only.
public final class ConnectionSpreader: Sendable {
    private final class Slot: Sendable {
        /// Connections open on the loop, or handed to it and not yet adopted.
        let open = Atomic<Int>(0)
        let inbox = Mutex<(descriptors: [Int32], ended: Bool)>(([], false))
    }

    private let slots: [Slot]

    /// For `loops` event loops, numbered from 0.
    public init(loops: Int) {
        precondition(loops >= 1, "at least one loop")
        slots = (0..<loops).map { _ in Slot() }
    }

    /// The loop a connection that `loop` accepted goes to — the one with the fewest
    /// open connections, `loop` itself on a tie — counted there from now on.
    public func assign(acceptedBy loop: Int) -> Int {
        var best = loop
        var fewest = slots[loop].open.load(ordering: .relaxed)
        for (i, slot) in slots.enumerated() where i != loop {
            let open = slot.open.load(ordering: .relaxed)
            if open < fewest {
                best = i
                fewest = open
            }
        }
        slots[best].open.add(1, ordering: .relaxed)
        return best
    }

    /// Puts `fd`, accepted by `from`, in the inbox of `to` (the caller then wakes `to`).
    /// False when `to` has ended: the connection is then counted on `from`, which keeps it.
    public func handOver(_ fd: Int32, from: Int, to: Int) -> Bool {
        let taken = slots[to].inbox.withLock { inbox in
            guard !inbox.ended else { return false }
            inbox.descriptors.append(fd)
            return true
        }
        if !taken {
            slots[to].open.subtract(1, ordering: .relaxed)
            slots[from].open.add(1, ordering: .relaxed)
        }
        return taken
    }

    /// Places a connection `loop` accepted (`assign`): true when it went to another loop's
    /// inbox and `wake` was called with that loop; false when `loop` serves it itself.
    public func handOff(_ fd: Int32, acceptedBy loop: Int, wake: (Int) -> Void) -> Bool {
        let destination = assign(acceptedBy: loop)
        guard destination != loop, handOver(fd, from: loop, to: destination) else { return false }
        wake(destination)
        return true
    }

    /// The descriptors handed to `loop` since it last looked; it serves them now.
    public func adopt(by loop: Int) -> [Int32] {
        slots[loop].inbox.withLock { inbox in
            defer { inbox.descriptors.removeAll() }
            return inbox.descriptors
        }
    }

    /// A connection of `loop` closed.
    public func released(by loop: Int) {
        slots[loop].open.subtract(1, ordering: .relaxed)
    }

    /// `loop` ends: nothing more is handed to it. Returns what was handed over and not
    /// adopted, no longer counted (the caller closes those).
    public func end(_ loop: Int) -> [Int32] {
        let left = slots[loop].inbox.withLock { inbox in
            inbox.ended = true
            defer { inbox.descriptors.removeAll() }
            return inbox.descriptors
        }
        slots[loop].open.subtract(left.count, ordering: .relaxed)
        return left
    }

    /// Open connections per loop (handed over and not yet adopted included).
    public var openPerLoop: [Int] { slots.map { $0.open.load(ordering: .relaxed) } }
}
