extension ClusterSupervisor {
    /// One relay per directed link: node A's connection to node B goes through "A>B".
    static func makeLinkRelays(_ nodes: [NodeSlot]) throws(SupervisorError) -> [String: LinkRelay] {
        var relays: [String: LinkRelay] = [:]
        for from in nodes {
            for to in nodes where to.name != from.name {
                do {
                    relays["\(from.name)>\(to.name)"] = try LinkRelay(targetPort: to.replicationPort)
                } catch {
                    for relay in relays.values { relay.stop() }
                    throw SupervisorError("cannot start the relay of \(from.name) → \(to.name): \(error)")
                }
            }
        }
        return relays
    }

    /// One relay per node to the single redis-server: "node-1>redis".
    func makeStoreRelays(to port: Int) throws(SupervisorError) {
        var relays: [String: LinkRelay] = [:]
        for node in nodes {
            do {
                relays["\(node.name)>redis"] = try LinkRelay(targetPort: port)
            } catch {
                for relay in relays.values { relay.stop() }
                throw SupervisorError("cannot start the relay of \(node.name) → redis: \(error)")
            }
        }
        storeRelays.withLock { $0 = relays }
    }

    /// `--peers` (through the relays when links are relayed) and, then, `--accept-peers` with the
    /// nodes' own addresses, which their hellos announce.
    func replicationPeerArguments(_ node: NodeSlot) -> [String] {
        let direct = nodes.map { "127.0.0.1:\($0.replicationPort)" }.joined(separator: ",")
        guard !linkRelays.isEmpty else { return ["--peers", direct] }
        let peers = nodes.map { peer in
            peer.name == node.name ? "127.0.0.1:\(peer.replicationPort)" : "127.0.0.1:\(linkRelays["\(node.name)>\(peer.name)"]!.port)"
        }
        return ["--peers", peers.joined(separator: ","), "--accept-peers", direct]
    }

    /// Cuts the links between `groups` (node names, and `redis` for the store of the `redis`
    /// strategy); one group alone is cut from every other node. Redis, unless named, is on the
    /// side of the last group (with `isolate`, the rest). Links within a group, and the
    /// balancer's to every node, stay up. Needs `relayedLinks`; a partition already in place is
    /// healed first.
    public func partition(_ groups: [[String]]) throws(SupervisorError) {
        let stores = storeRelays.withLock { $0 }
        guard !linkRelays.isEmpty || !stores.isEmpty else {
            throw SupervisorError(
                "partitions need relayed links (ClusterConfiguration.relayedLinks; --strategy replicate, or redis with one server)")
        }
        let names = nodeNames + (stores.isEmpty ? [] : ["redis"])
        for name in groups.joined() where !names.contains(name) {
            throw SupervisorError("no node named \(name); the nodes are \(names.joined(separator: ", "))")
        }
        var sides = groups
        if sides.count == 1 { sides.append(names.filter { !groups[0].contains($0) }) }
        if !stores.isEmpty && !sides.contains(where: { $0.contains("redis") }) { sides[sides.count - 1].append("redis") }
        healPartition()
        let relays = allRelays
        for (i, a) in sides.enumerated() {
            for b in sides[(i + 1)...] {
                for x in a {
                    for y in b {
                        relays["\(x)>\(y)"]?.cut()
                        relays["\(y)>\(x)"]?.cut()
                    }
                }
            }
        }
        onEvent("partition: " + sides.map { $0.joined(separator: ",") }.joined(separator: " | "))
    }

    /// Makes the link between `a` and `b` (two nodes, or a node and `redis`) slow both ways: every
    /// chunk waits `latencyMillis`, and `lossPercent` of them a retransmission timeout more
    /// (`LinkRelay.setLoss`); 0 and 0 make it fast again. Needs `relayedLinks`.
    public func slowLink(_ a: String, _ b: String, latencyMillis: Int, lossPercent: Int) throws(SupervisorError) {
        let relays = allRelays
        let link = [relays["\(a)>\(b)"], relays["\(b)>\(a)"]].compactMap { $0 }
        guard !link.isEmpty else {
            throw SupervisorError(
                "no relayed link between \(a) and \(b) (relayed links: \(relays.keys.sorted().joined(separator: ", ")))")
        }
        for relay in link {
            relay.setLatency(millis: latencyMillis)
            relay.setLoss(percent: lossPercent)
        }
        onEvent(latencyMillis == 0 && lossPercent == 0
            ? "link \(a) ⇄ \(b) fast again"
            : "link \(a) ⇄ \(b) slow: \(latencyMillis) ms each way, \(lossPercent)% of chunks held \(LinkRelay.retransmissionMillis) ms more")
    }

    /// Every cut link works again.
    public func healPartition() {
        let cut = allRelays.values.filter(\.isCut)
        for relay in cut { relay.heal() }
        if !cut.isEmpty { onEvent("partition healed") }
    }

    /// The links cut now, as "from>to" (sorted).
    public var cutLinks: [String] { allRelays.filter { $0.value.isCut }.map(\.key).sorted() }

    /// Whether `partition(_:)` can cut anything (links are relayed).
    public var partitionsAvailable: Bool { !linkRelays.isEmpty || !storeRelays.withLock { $0.isEmpty } }

    /// What node `name` reaches now over relayed links: the other nodes and `redis`, as "name>X" is not cut.
    public func reachable(from name: String) -> [String] {
        allRelays.filter { $0.key.hasPrefix(name + ">") && !$0.value.isCut }.map { String($0.key.dropFirst(name.count + 1)) }
            .sorted()
    }

    /// The replication links' relays and the store links'.
    private var allRelays: [String: LinkRelay] {
        linkRelays.merging(storeRelays.withLock { $0 }) { first, _ in first }
    }
}
