using NativeLora.Serving;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Serving;

/// <summary>
/// The prefix cache's radix tree on its own, against a simulated page pool that records what each page holds: reuse
/// returns pages holding exactly the request's prefix, the last prompt token is always left to compute, adapters never
/// share, eviction is least recently used and never touches a page a running request uses, and no page is ever lost
/// or owned twice.
/// </summary>
public class PrefixCacheTests
{
    private const int PageSize = 4;

    [Test]
    public void AMatchIsTheLongestCachedPrefixInWholePagesAndLeavesTheLastTokenToCompute()
    {
        var cache = new PrefixCache(PageSize);
        int[] prompt = Enumerable.Range(100, 8).ToArray(); // exactly two pages
        var first = cache.Acquire(-1, prompt);
        Assert.That(first.Tokens, Is.EqualTo(0));
        Assert.That(cache.Insert(-1, prompt, new[] { 7, 3 }, first), Is.EqualTo(new[] { 7, 3 }));
        cache.Release(first);

        var same = cache.Acquire(-1, prompt);
        Assert.That(same.Tokens, Is.EqualTo(4), "8 tokens cached, but the 8th must be computed for its logits: one page reused");
        Assert.That(same.Pages, Is.EqualTo(new[] { 7 }));
        var longer = cache.Acquire(-1, prompt.Concat(new[] { 1, 2, 3 }).ToArray());
        Assert.That(longer.Tokens, Is.EqualTo(8));
        Assert.That(longer.Pages, Is.EqualTo(new[] { 7, 3 }));
        var diverging = cache.Acquire(-1, prompt.Take(5).Concat(new[] { 9, 9, 9, 9, 9 }).ToArray());
        Assert.That(diverging.Pages, Is.EqualTo(new[] { 7 }), "tokens 4..7 differ: only the first page is shared");
        Assert.That(cache.Acquire(5, prompt.Concat(new[] { 1 }).ToArray()).Tokens, Is.EqualTo(0), "another adapter's keys and values are not the base's");
    }

    [Test]
    public void EvictionIsLeastRecentlyUsedLeavesFirstAndNeverTouchesPinnedPages()
    {
        var cache = new PrefixCache(PageSize);
        int[] A(int n) => Enumerable.Range(0, n).ToArray();
        int[] B(int n) => Enumerable.Range(50, n).ToArray();
        var a = cache.Acquire(-1, A(9));
        cache.Insert(-1, A(9), new[] { 0, 1, 2 }, a); // pages 0, 1 (the third page is partial)
        cache.Release(a);
        var b = cache.Acquire(-1, B(9));
        cache.Insert(-1, B(9), new[] { 10, 11, 12 }, b); // pages 10, 11
        cache.Release(b);
        Assert.That(cache.CachedPages, Is.EqualTo(4));

        var touch = cache.Acquire(-1, A(9)); // A is now the most recent, and pinned
        Assert.That(touch.Pages, Is.EqualTo(new[] { 0, 1 }));
        Assert.That(cache.Evict(1), Is.EqualTo(new[] { 11 }), "B's leaf goes first");
        Assert.That(cache.Evict(10), Is.EqualTo(new[] { 10 }), "A is pinned: nothing else may go");
        cache.Release(touch);
        Assert.That(cache.Evict(10), Is.EqualTo(new[] { 1, 0 }), "a parent becomes evictable after its child");
        Assert.That(cache.CachedPages, Is.EqualTo(0));
        Assert.That(cache.Acquire(-1, A(9)).Tokens, Is.EqualTo(0));
    }

    [Test]
    public void ADuplicatePrefixKeepsTheTreesPagesAndAdoptsOnlyWhatIsNew()
    {
        var cache = new PrefixCache(PageSize);
        int[] p = Enumerable.Range(0, 13).ToArray();
        // two requests with the same prompt admitted together: neither found the other's pages
        var m1 = cache.Acquire(-1, p);
        var m2 = cache.Acquire(-1, p);
        Assert.That(cache.Insert(-1, p, new[] { 1, 2, 3, 4 }, m1), Is.EqualTo(new[] { 1, 2, 3 }));
        Assert.That(cache.Insert(-1, p, new[] { 5, 6, 7, 8 }, m2), Is.Empty, "the second copy stays the request's own");
        var longer = p.Concat(Enumerable.Range(90, 8)).ToArray();
        var m3 = cache.Acquire(-1, longer);
        Assert.That(m3.Pages, Is.EqualTo(new[] { 1, 2, 3 }));
        Assert.That(cache.Insert(-1, longer, new[] { 1, 2, 3, 9, 10, 11 }, m3), Is.EqualTo(new[] { 9, 10 }), "pages 3 and 4 of the longer prompt are new");
        Assert.Throws<InvalidOperationException>(() => cache.Insert(-1, longer, new[] { 1, 2, 3, 9, 10, 11 }, m3));
        foreach (var m in new[] { m1, m2, m3 }) cache.Release(m);
        Assert.Throws<InvalidOperationException>(() => cache.Release(m1));
        Assert.That(cache.Evict(100).Order(), Is.EqualTo(new[] { 1, 2, 3, 9, 10 }));
    }

    [Test]
    public void ARandomWorkloadNeverLosesAPageNorReusesAWrongOne()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        const int poolPages = 40;
        var cache = new PrefixCache(PageSize);
        var free = new Stack<int>(Enumerable.Range(0, poolPages));
        var held = new HashSet<int>(); // pages the tree owns, as the engine learns it (adopted − evicted)
        var content = new Dictionary<int, string>(); // what a page holds: adapter and the prompt up to the end of the page
        var running = new List<(PrefixCache.Match Match, List<int> Pages, HashSet<int> TreeOwned)>();
        var systems = Enumerable.Range(0, 3).Select(i => Enumerable.Range(0, rng.Next(0, 14)).Select(_ => rng.Next(5)).ToArray()).ToArray();
        string Key(int adapter, int[] prompt, int page) => adapter + ":" + string.Join(",", prompt.Take((page + 1) * PageSize));
        int admitted = 0, reused = 0, evicted = 0;

        void Invariants()
        {
            var runningPrivate = running.SelectMany(r => r.Pages.Where(p => !r.TreeOwned.Contains(p))).ToList();
            var all = free.Concat(held).Concat(runningPrivate).ToList();
            Assert.That(all, Is.Unique, $"a page is owned twice (seed {seed})");
            Assert.That(all, Has.Count.EqualTo(poolPages), $"a page was lost (seed {seed})");
            Assert.That(cache.CachedPages, Is.EqualTo(held.Count), $"seed {seed}");
            Assert.That(running.SelectMany(r => r.TreeOwned).All(held.Contains), Is.True, $"a running request's shared page left the tree (seed {seed})");
        }

        for (int step = 0; step < 3000; step++)
        {
            if (running.Count < 4 && rng.Next(3) > 0)
            {
                int adapter = rng.Next(3) - 1;
                var prompt = systems[rng.Next(systems.Length)].Concat(Enumerable.Range(0, rng.Next(1, 10)).Select(_ => rng.Next(5))).ToArray();
                int total = prompt.Length + rng.Next(1, 6);
                var match = cache.Acquire(adapter, prompt);
                Assert.That(match.Tokens, Is.LessThan(prompt.Length));
                for (int i = 0; i < match.Pages.Count; i++)
                    Assert.That(content[match.Pages[i]], Is.EqualTo(Key(adapter, prompt, i)), $"page {i} holds another prefix (seed {seed})");
                int need = (total + PageSize - 1) / PageSize - match.Pages.Count;
                if (need > free.Count)
                {
                    var inUse = running.SelectMany(r => r.Pages).Concat(match.Pages).ToHashSet();
                    foreach (var p in cache.Evict(need - free.Count))
                    {
                        Assert.That(inUse, Does.Not.Contain(p), $"evicted page {p} is in use (seed {seed})");
                        Assert.That(held.Remove(p), Is.True);
                        content.Remove(p);
                        free.Push(p);
                        evicted++;
                    }
                }
                if (need > free.Count)
                {
                    cache.Release(match); // no room even after eviction: the request waits (here: is dropped)
                    Invariants();
                    continue;
                }
                var pages = match.Pages.ToList();
                for (int i = 0; i < need; i++) pages.Add(free.Pop());
                for (int i = match.Pages.Count; i < pages.Count; i++) // the prefill writes the rest of the prompt
                    content[pages[i]] = (i + 1) * PageSize <= prompt.Length ? Key(adapter, prompt, i) : "partial";
                var adopted = cache.Insert(adapter, prompt, pages, match);
                foreach (var p in adopted)
                {
                    Assert.That(content[p], Is.Not.EqualTo("partial"), $"a partial page was shared (seed {seed})");
                    Assert.That(held.Add(p), Is.True);
                }
                running.Add((match, pages, match.Pages.Concat(adopted).ToHashSet()));
                admitted++;
                if (match.Tokens > 0) reused++;
            }
            else if (running.Count > 0)
            {
                var r = running[rng.Next(running.Count)];
                running.Remove(r);
                cache.Release(r.Match);
                foreach (var p in r.Pages.Where(p => !r.TreeOwned.Contains(p)))
                {
                    content.Remove(p);
                    free.Push(p);
                }
            }
            Invariants();
        }
        Assert.That(admitted, Is.GreaterThan(500), $"seed {seed}");
        Assert.That(reused, Is.GreaterThan(admitted / 10), $"shared system prompts should hit (seed {seed})");
        Assert.That(evicted, Is.GreaterThan(0), $"the pool ran full and the tree gave pages back (seed {seed})");
        foreach (var r in running) cache.Release(r.Match);
        Assert.That(cache.Evict(int.MaxValue), Has.Count.EqualTo(held.Count), "everything unpinned can be evicted at the end");
        Assert.That(cache.CachedPages, Is.EqualTo(0));
    }
}
