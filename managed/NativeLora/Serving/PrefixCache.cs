namespace NativeLora.Serving;

/// <summary>
/// Prefix caching (as vLLM's and SGLang's): the KV pages of prompts already prefilled, kept in a radix tree keyed by
/// (adapter, token ids) so that a request starting with the same tokens — every request carrying one system prompt —
/// reuses them and prefills only the rest. The tree's edges are whole pages: a node holds one full KV page and the
/// PageSize token ids written into it, its children the pages that followed it in some prompt. Only full pages of a
/// prompt are shared; the page a prompt ends in is never shared (it is still written by decoding), so no page ever needs
/// copying on write. A match leaves at least one prompt token to prefill, because the last prompt token's logits are
/// needed to sample the first generated token.
///
/// Pages are counted, not copied: a node is pinned by every running request whose prefix passes through it and is
/// evicted only when unpinned and a leaf, least recently used first, when the engine needs pages back. The cache owns
/// the pages of its nodes; the engine owns everything else. Not thread-safe: the engine's loop is the only caller.
/// </summary>
public sealed class PrefixCache
{
    internal sealed class Node
    {
        public required int[] Tokens; // PageSize ids (empty at a root)
        public required int Page;     // −1 at a root
        public Node? Parent;
        public readonly Dictionary<Chunk, Node> Children = new();
        public int Pins;
        public long LastUsed;
        public int Adapter;
    }

    /// <summary>A page's token ids as a dictionary key (structural equality).</summary>
    internal readonly struct Chunk(int[] tokens) : IEquatable<Chunk>
    {
        public readonly int[] Tokens = tokens;
        public bool Equals(Chunk other) => Tokens.AsSpan().SequenceEqual(other.Tokens);
        public override bool Equals(object? obj) => obj is Chunk c && Equals(c);
        public override int GetHashCode()
        {
            var h = new HashCode();
            foreach (var t in Tokens) h.Add(t);
            return h.ToHashCode();
        }
    }

    /// <summary>
    /// A request's cached prefix: the first Tokens = Pages.Count · PageSize positions, whose keys and values it reuses from
    /// Pages. Everything on its path stays pinned until <see cref="Release"/> (also the nodes <see cref="Insert"/> adds).
    /// </summary>
    public sealed class Match
    {
        internal readonly List<Node> Path = new();
        public int Tokens { get; internal set; }
        public IReadOnlyList<int> Pages { get; internal set; } = Array.Empty<int>();
        internal bool Released;
    }

    private readonly Dictionary<int, Node> _roots = new();
    private long _clock;

    public int PageSize { get; }
    /// <summary>Pages the tree holds (pinned or not).</summary>
    public int CachedPages { get; private set; }
    /// <summary>Cached pages no running request uses: what <see cref="Evict"/> can give back.</summary>
    public int EvictablePages => AllNodes().Count(n => n.Pins == 0);

    public PrefixCache(int pageSize)
    {
        if (pageSize < 1) throw new ArgumentException($"the page size must be ≥ 1, got {pageSize}");
        PageSize = pageSize;
    }

    /// <summary>
    /// The longest cached prefix of prompt under adapter (a key naming one loaded set of weights: −1 for the base model,
    /// and a fresh key each time an adapter is loaded, so a reloaded name never meets stale keys and values), in whole pages and at most
    /// prompt.Length − 1 tokens; its nodes are pinned (never evicted) until <see cref="Release"/>.
    /// </summary>
    public Match Acquire(int adapter, ReadOnlySpan<int> prompt)
    {
        var match = new Match();
        int usable = (prompt.Length - 1) / PageSize; // whole pages, the last prompt token left to compute
        if (_roots.TryGetValue(adapter, out var node))
        {
            long now = ++_clock;
            for (int p = 0; p < usable; p++)
            {
                if (!node.Children.TryGetValue(new Chunk(prompt.Slice(p * PageSize, PageSize).ToArray()), out var child)) break;
                node = child;
                node.Pins++;
                node.LastUsed = now;
                match.Path.Add(node);
            }
        }
        match.Tokens = match.Path.Count * PageSize;
        match.Pages = match.Path.Select(n => n.Page).ToArray();
        return match;
    }

    /// <summary>Unpins a match (the request ended); its pages stay cached until evicted.</summary>
    public void Release(Match match)
    {
        if (match.Released) throw new InvalidOperationException("this prefix match was already released");
        match.Released = true;
        foreach (var n in match.Path)
        {
            if (n.Pins <= 0) throw new InvalidOperationException("prefix cache node unpinned more often than pinned");
            n.Pins--;
        }
    }

    /// <summary>
    /// After a prefill of prompt under adapter, whose KV sits in pages (position t in pages[t / PageSize]): the tree takes
    /// the full pages of the prompt it does not hold yet (the partial last page never). The match the request was admitted
    /// with is extended over the adopted pages, so they stay pinned while the request runs. Returns the adopted pages: the
    /// cache owns them now, and the engine must not free them.
    /// </summary>
    public IReadOnlyList<int> Insert(int adapter, ReadOnlySpan<int> prompt, IReadOnlyList<int> pages, Match match)
    {
        if (match.Released) throw new InvalidOperationException("insert with a released match");
        int full = prompt.Length / PageSize;
        if (pages.Count < full) throw new ArgumentException($"{pages.Count} pages cannot hold {full} full pages of the prompt");
        if (!_roots.TryGetValue(adapter, out var node))
            _roots[adapter] = node = new Node { Tokens = Array.Empty<int>(), Page = -1, Adapter = adapter };
        var adopted = new List<int>();
        long now = ++_clock;
        int reused = match.Pages.Count;
        if (match.Path.Count != reused) throw new InvalidOperationException("a match is inserted once, after its prefill");
        for (int p = 0; p < full; p++)
        {
            if (p < reused)
            {
                // the request reused this node: its own pages[p] is the node's page
                if (match.Path[p].Page != pages[p]) throw new ArgumentException($"page {p} of the sequence is {pages[p]}, the matched prefix has {match.Path[p].Page}");
                node = match.Path[p];
                continue;
            }
            var chunk = new Chunk(prompt.Slice(p * PageSize, PageSize).ToArray());
            if (!node.Children.TryGetValue(chunk, out var child))
            {
                child = new Node { Tokens = chunk.Tokens, Page = pages[p], Parent = node, Adapter = adapter };
                node.Children.Add(chunk, child);
                CachedPages++;
                adopted.Add(pages[p]);
            }
            // else another request cached the same tokens meanwhile: the tree keeps its page, this request's copy stays
            // the request's own; the pages after it still hang below the tree's node (a page's keys and values depend
            // only on the tokens up to it, not on where the earlier ones were stored)
            child.Pins++;
            child.LastUsed = now;
            match.Path.Add(child);
            node = child;
        }
        return adopted;
    }

    /// <summary>
    /// Frees up to `pages` unpinned pages, least recently used leaves first (a parent becomes a leaf once its children
    /// are gone), and returns them for the engine to put back in the KV pool. Pinned pages are never evicted.
    /// </summary>
    public List<int> Evict(int pages)
    {
        var freed = new List<int>();
        if (pages <= 0) return freed;
        var leaves = new PriorityQueue<Node, long>();
        foreach (var n in AllNodes())
            if (n.Children.Count == 0 && n.Pins == 0) leaves.Enqueue(n, n.LastUsed);
        while (freed.Count < pages && leaves.TryDequeue(out var leaf, out _))
        {
            var parent = leaf.Parent!;
            parent.Children.Remove(new Chunk(leaf.Tokens));
            freed.Add(leaf.Page);
            CachedPages--;
            if (parent.Page >= 0 && parent.Children.Count == 0 && parent.Pins == 0) leaves.Enqueue(parent, parent.LastUsed);
            else if (parent.Page < 0 && parent.Children.Count == 0) _roots.Remove(parent.Adapter);
        }
        return freed;
    }

    /// <summary>Drops every cached prefix of an adapter key that no request pins (an unloaded adapter's); returns the freed pages.</summary>
    public List<int> Forget(int adapter)
    {
        var freed = new List<int>();
        if (!_roots.TryGetValue(adapter, out var root)) return freed;
        void Drop(Node n)
        {
            foreach (var c in n.Children.Values.ToList())
            {
                Drop(c);
                if (c.Children.Count == 0 && c.Pins == 0)
                {
                    n.Children.Remove(new Chunk(c.Tokens));
                    freed.Add(c.Page);
                    CachedPages--;
                }
            }
        }
        Drop(root);
        if (root.Children.Count == 0) _roots.Remove(adapter);
        return freed;
    }

    private IEnumerable<Node> AllNodes()
    {
        var stack = new Stack<Node>(_roots.Values);
        while (stack.Count > 0)
        {
            var n = stack.Pop();
            if (n.Page >= 0) yield return n;
            foreach (var c in n.Children.Values) stack.Push(c);
        }
    }
}
