using System.Diagnostics;
using System.Threading.Channels;
using NativeLora.Lora;
using NativeLora.Model;

namespace NativeLora.Serving;

/// <summary>How the engine batches and what it holds. One schema for the library, the CLI and the server.</summary>
public sealed record EngineOptions
{
    /// <summary>Most sequences decoded together; 1 turns continuous batching off (requests run one at a time).</summary>
    public int MaxBatch { get; init; } = 16;
    /// <summary>Requests waiting for a place in the batch; beyond it Submit throws <see cref="QueueFullException"/>.</summary>
    public int MaxQueue { get; init; } = 64;
    /// <summary>KV-cache memory (keys and values of all layers) in bytes, split into pages of PageSize positions.</summary>
    public long KvCacheBytes { get; init; } = 256L << 20;
    public int PageSize { get; init; } = 16;
    /// <summary>Adapters that can be loaded at once, and their largest rank.</summary>
    public int MaxLoras { get; init; } = 4;
    public int MaxLoraRank { get; init; } = 64;
    /// <summary>Keep the KV pages of prefilled prompts in a radix tree and reuse them for prompts with the same start (<see cref="PrefixCache"/>).</summary>
    public bool PrefixCaching { get; init; } = true;

    public void Validate()
    {
        if (MaxBatch < 1) throw new ArgumentException($"max batch must be ≥ 1, got {MaxBatch}");
        if (MaxQueue < 0) throw new ArgumentException($"max queue must be ≥ 0, got {MaxQueue}");
        if (KvCacheBytes < 1) throw new ArgumentException($"the KV-cache budget must be > 0 bytes, got {KvCacheBytes}");
        if (PageSize < 1) throw new ArgumentException($"the KV page size must be ≥ 1, got {PageSize}");
        if (MaxLoras < 1 || MaxLoraRank < 1) throw new ArgumentException($"max LoRAs and max LoRA rank must be ≥ 1, got {MaxLoras} and {MaxLoraRank}");
    }
}

/// <summary>One generation: prompt ids, which model (null: the base; else a loaded adapter's name), limits, sampling.</summary>
public sealed record GenerationRequest(int[] Prompt, string? Adapter, int MaxTokens, SamplingOptions Sampling, IReadOnlySet<int> StopIds)
{
    /// <summary>
    /// Prompt positions [Start, End) whose final hidden states are averaged into <see cref="GenerationHandle.PromptEmbedding"/>
    /// (input-drift monitoring: the last user message). They are always prefilled, whatever the prefix cache holds.
    /// </summary>
    public (int Start, int End)? Embed { get; init; }
}

public enum FinishReason { Stop, Length, Cancelled }

/// <summary>A submitted request: its tokens as they come, and how it ended.</summary>
public sealed class GenerationHandle
{
    private readonly Channel<int> _tokens = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly TaskCompletionSource<FinishReason> _done = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ChannelReader<int> Tokens => _tokens.Reader;
    /// <summary>Ends with the finish reason, or faults with the error that stopped the request.</summary>
    public Task<FinishReason> Completion => _done.Task;
    /// <summary>Seconds from Submit until the request entered the batch (its prefill began).</summary>
    public double QueueSeconds { get; internal set; }
    /// <summary>Mean final hidden state over the request's <see cref="GenerationRequest.Embed"/> positions, set before the first token.</summary>
    public float[]? PromptEmbedding { get; internal set; }
    /// <summary>Prompt tokens whose keys and values came from the prefix cache (not prefilled).</summary>
    public int CachedPromptTokens { get; internal set; }

    internal void Emit(int token) => _tokens.Writer.TryWrite(token);
    internal void Finish(FinishReason reason)
    {
        _tokens.Writer.TryComplete();
        _done.TrySetResult(reason);
    }
    internal void Fail(Exception e)
    {
        _tokens.Writer.TryComplete(e);
        _done.TrySetException(e);
    }
}

/// <summary>Submit refused because the wait queue is full; retry after RetryAfter.</summary>
public sealed class QueueFullException(int queued, TimeSpan retryAfter)
    : Exception($"the server is busy ({queued} requests waiting); retry in {retryAfter.TotalSeconds:F0} s")
{
    public TimeSpan RetryAfter { get; } = retryAfter;
}

/// <summary>
/// Continuous batching over one model: a single loop owns the device, the paged KV cache and the
/// adapter slots. Between decode steps it admits waiting requests (their prompts prefilled together
/// in one packed forward, each then sampling its first token) while the batch has room and the cache has pages for the request's prompt plus max_tokens — reserved up
/// front, so a running request never waits for memory and nothing is preempted — then feeds every
/// running sequence one token in one batched step (rows may use different adapters). A request
/// ends at a stop id, at max_tokens or the context length, or when its CancellationToken fires
/// (client gone, stop string found); its pages and adapter slot are freed at once.
/// </summary>
public sealed class InferenceEngine : IDisposable
{
    private readonly CausalLm _model;
    private readonly Generator _generator;
    private readonly KvCache _cache;
    private readonly PrefixCache? _prefix;
    private readonly Dictionary<string, int> _adapterKeys = new(StringComparer.Ordinal); // a fresh key per load: a reloaded name never meets stale KV
    private int _lastAdapterKey;
    private readonly LoraSlots _slots;
    private readonly EngineOptions _options;
    private readonly object _lock = new();
    private readonly LinkedList<Pending> _waiting = new();
    private readonly Queue<(Action Work, TaskCompletionSource Done)> _commands = new();
    private readonly List<Running> _running = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Thread _loop;
    private volatile bool _stopping;
    private HashSet<string> _adapterNames = new(StringComparer.Ordinal);
    private double _stepSeconds = 0.05; // recent decode step time, for Retry-After

    public CausalLm Model => _model;
    public int QueueDepth { get { lock (_lock) return _waiting.Count; } }
    public int RunningCount => Volatile.Read(ref _runningCount);
    public int KvPagesTotal => _cache.PageCount;
    /// <summary>Pages held by running requests (the prefix cache's unpinned pages are free to reclaim and not counted).</summary>
    public int KvPagesUsed => Volatile.Read(ref _kvPagesUsed);
    /// <summary>Pages the prefix cache holds (some may also be in use by running requests).</summary>
    public int PrefixCachedPages => Volatile.Read(ref _prefixCachedPages);
    /// <summary>Prompt tokens looked up in the prefix cache, and those found (the hit rate is their ratio); pages evicted.</summary>
    public long PrefixQueryTokens => Interlocked.Read(ref _prefixQueryTokens);
    public long PrefixHitTokens => Interlocked.Read(ref _prefixHitTokens);
    public long PrefixEvictedPages => Interlocked.Read(ref _prefixEvictedPages);
    public int KvPageSize => _cache.PageSize;
    public int AdapterSlotsTotal => _slots.Capacity;
    public int AdapterSlotsUsed => Volatile.Read(ref _adapterSlotsUsed);
    public IReadOnlySet<string> AdapterNames { get { lock (_lock) return _adapterNames; } }
    /// <summary>Called on the engine loop after each decode step with (rows, seconds).</summary>
    public Action<int, double>? OnStep { get; set; }

    private int _runningCount, _kvPagesUsed, _adapterSlotsUsed, _prefixCachedPages;
    private long _prefixQueryTokens, _prefixHitTokens, _prefixEvictedPages;

    private sealed record Pending(GenerationRequest Request, GenerationHandle Handle, CancellationToken Cancel, long SubmittedTicks);

    private sealed class Running
    {
        public required GenerationRequest Request;
        public required GenerationHandle Handle;
        public required CancellationToken Cancel;
        public required KvSequence Seq;
        public required Sampler Sampler;
        public required List<int> History;
        public int Slot = -1;
        public int AdapterKey = -1;
        public PrefixCache.Match? Match;
        public HashSet<int> SharedPages = new(); // pages of Seq the prefix cache owns
        public int Generated;
        public int Next;
    }

    public InferenceEngine(CausalLm model, EngineOptions options)
    {
        options.Validate();
        _model = model;
        _options = options;
        _generator = new Generator(model);
        _cache = KvCache.ForBudget(model, options.KvCacheBytes, options.PageSize);
        if (options.PrefixCaching) _prefix = new PrefixCache(options.PageSize);
        try
        {
            _slots = new LoraSlots(model, options.MaxLoras, options.MaxLoraRank);
        }
        catch
        {
            _cache.Dispose();
            throw;
        }
        _loop = new Thread(Loop) { Name = "nativelora-engine", IsBackground = true };
        _loop.Start();
    }

    /// <summary>Largest prompt + max_tokens one request can ask for: the context, and what the whole cache holds.</summary>
    public int MaxSequenceTokens => Math.Min(_model.Config.MaxPositionEmbeddings, _cache.PageCount * _cache.PageSize);

    /// <summary>
    /// Queues a request. Throws ArgumentException for a request that can never run (empty prompt,
    /// prompt + max_tokens beyond the context or the cache, unknown adapter) and QueueFullException
    /// when the wait queue is full.
    /// </summary>
    public GenerationHandle Submit(GenerationRequest request, CancellationToken cancel = default)
    {
        if (request.Prompt.Length == 0) throw new ArgumentException("the prompt is empty");
        if (request.MaxTokens < 1) throw new ArgumentException($"max_tokens must be ≥ 1, got {request.MaxTokens}");
        int total = request.Prompt.Length + request.MaxTokens;
        if (total > MaxSequenceTokens)
            throw new ArgumentException($"the prompt ({request.Prompt.Length} tokens) plus max_tokens ({request.MaxTokens}) is {total} tokens; this server holds at most {MaxSequenceTokens} per request");
        foreach (var id in request.Prompt)
            if ((uint)id >= (uint)_model.Config.VocabSize) throw new ArgumentException($"token id {id} is outside the vocabulary (0..{_model.Config.VocabSize - 1})");
        request.Sampling.Validate();
        var handle = new GenerationHandle();
        lock (_lock)
        {
            if (_stopping) throw new ObjectDisposedException(nameof(InferenceEngine), "the engine is shutting down");
            if (request.Adapter != null && !_adapterNames.Contains(request.Adapter))
                throw new KeyNotFoundException($"no model or adapter named '{request.Adapter}' is loaded");
            if (_waiting.Count >= _options.MaxQueue)
                throw new QueueFullException(_waiting.Count, RetryAfter());
            _waiting.AddLast(new Pending(request, handle, cancel, Stopwatch.GetTimestamp()));
        }
        _wake.Release();
        return handle;
    }

    // a rough wait until a place frees: the queue ahead, one step per token of an average request
    private TimeSpan RetryAfter() => TimeSpan.FromSeconds(Math.Clamp(Math.Ceiling(_stepSeconds * 16 * (1 + _waiting.Count / (double)_options.MaxBatch)), 1, 60));

    /// <summary>Loads a PEFT adapter under name between steps (the base and other adapters keep serving).</summary>
    public Task LoadAdapterAsync(string name, string dir) => RunOnLoop(() =>
    {
        _slots.Load(name, dir);
        _adapterKeys[name] = ++_lastAdapterKey;
        lock (_lock) _adapterNames = new HashSet<string>(_slots.Names, StringComparer.Ordinal);
        Publish();
    });

    /// <summary>Drops an adapter; requests already running on it finish with it, new ones are refused.</summary>
    public Task UnloadAdapterAsync(string name) => RunOnLoop(() =>
    {
        _slots.Unload(name);
        if (_adapterKeys.Remove(name, out int key) && _prefix != null) ReturnPages(_prefix.Forget(key)); // what no request pins goes now, the rest by LRU
        lock (_lock) _adapterNames = new HashSet<string>(_slots.Names, StringComparer.Ordinal);
        Publish();
    });

    private Task RunOnLoop(Action action)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            if (_stopping) throw new ObjectDisposedException(nameof(InferenceEngine), "the engine is shutting down");
            _commands.Enqueue((action, done));
        }
        _wake.Release();
        return done.Task;
    }

    private void Loop()
    {
        _model.Device.Accelerator.Bind(); // the device's context is current on this thread (CUDA)
        while (true)
        {
            try
            {
                if (_stopping) break;
                RunCommands();
                Admit();
                if (_running.Count == 0)
                {
                    _wake.Wait(TimeSpan.FromMilliseconds(200));
                    continue;
                }
                DecodeStep();
            }
            catch (Exception e)
            {
                // a failed step fails the requests in it; the engine serves the next ones
                foreach (var r in _running.ToList()) Finish(r, null, e);
            }
        }
        foreach (var r in _running.ToList()) Finish(r, null, new OperationCanceledException("the engine stopped"));
        lock (_lock)
        {
            foreach (var p in _waiting) p.Handle.Fail(new OperationCanceledException("the engine stopped"));
            _waiting.Clear();
            foreach (var (_, done) in _commands) done.TrySetException(new OperationCanceledException("the engine stopped"));
            _commands.Clear();
        }
    }

    private void RunCommands()
    {
        while (true)
        {
            (Action Work, TaskCompletionSource Done) c;
            lock (_lock) if (!_commands.TryDequeue(out c)) return;
            try
            {
                c.Work();
                c.Done.SetResult();
            }
            catch (Exception e)
            {
                c.Done.SetException(e);
            }
        }
    }

    // admits waiting requests (first come, first served) while the batch and the cache have room, then
    // prefills all of them in one packed forward and hands each its first token
    private void Admit()
    {
        var admitted = new List<Running>();
        while (_running.Count + admitted.Count < _options.MaxBatch)
        {
            Pending p;
            PrefixCache.Match? match = null;
            lock (_lock)
            {
                if (_waiting.First == null) break;
                p = _waiting.First.Value;
                if (!p.Cancel.IsCancellationRequested)
                {
                    match = Lookup(p.Request);
                    int need = _cache.PagesFor(p.Request.Prompt.Length + p.Request.MaxTokens) - (match?.Pages.Count ?? 0);
                    if (need > _cache.FreePages && _prefix != null) ReturnPages(_prefix.Evict(need - _cache.FreePages));
                    if (need > _cache.FreePages)
                    {
                        if (match != null) _prefix!.Release(match);
                        break;
                    }
                }
                _waiting.RemoveFirst();
            }
            p.Handle.QueueSeconds = Stopwatch.GetElapsedTime(p.SubmittedTicks).TotalSeconds;
            if (p.Cancel.IsCancellationRequested)
            {
                p.Handle.Finish(FinishReason.Cancelled);
                continue;
            }
            var req = p.Request;
            var r = new Running
            {
                Request = req, Handle = p.Handle, Cancel = p.Cancel, Seq = new KvSequence(),
                Sampler = new Sampler(req.Sampling), History = new List<int>(req.Prompt), Match = match,
                AdapterKey = match != null ? AdapterKey(req.Adapter) : -1,
            };
            try
            {
                if (req.Adapter != null) r.Slot = _slots.Acquire(req.Adapter); // unloaded while it waited: KeyNotFound
                if (match != null)
                {
                    // the cached prefix's pages come first; the sequence continues after them
                    r.Seq.Pages.AddRange(match.Pages);
                    r.SharedPages.UnionWith(match.Pages);
                    r.Seq.Length = match.Tokens;
                    r.Handle.CachedPromptTokens = match.Tokens;
                    Interlocked.Add(ref _prefixQueryTokens, req.Prompt.Length);
                    Interlocked.Add(ref _prefixHitTokens, match.Tokens);
                }
                if (!_cache.TryReserve(r.Seq, req.Prompt.Length + req.MaxTokens)) throw new InvalidOperationException("the KV cache has no room for the request");
                admitted.Add(r);
            }
            catch (Exception e)
            {
                Finish(r, null, e);
            }
        }
        if (admitted.Count == 0) return;
        _running.AddRange(admitted);
        PrefillResult result;
        try
        {
            var embed = admitted.Any(r => r.Request.Embed != null)
                ? admitted.Select(r => r.Request.Embed is { } e ? Enumerable.Range(e.Start, e.End - e.Start).ToArray() : Array.Empty<int>()).ToList()
                : null;
            using (Diagnostics.OpProfiler.Time("prefill", _model.Device))
                result = _generator.Extend(_cache, admitted.Select(r => r.Seq).ToList(),
                    admitted.Select(r => r.Request.Prompt[r.Seq.Length..]).ToList(), admitted.Select(r => r.Slot).ToArray(), embed);
        }
        catch (Exception e)
        {
            foreach (var r in admitted) Finish(r, null, e);
            return;
        }
        for (int i = 0; i < admitted.Count; i++)
        {
            var r = admitted[i];
            if (result.Hidden?[i] is { Length: > 0 } rows) r.Handle.PromptEmbedding = DriftProfile.MeanOf(rows);
            if (r.Match != null) r.SharedPages.UnionWith(_prefix!.Insert(r.AdapterKey, r.Request.Prompt, r.Seq.Pages, r.Match));
        }
        for (int i = 0; i < admitted.Count; i++) Accept(admitted[i], result.Logits[i]);
        Publish();
    }

    // the longest cached prefix this request may reuse: never its last token (its logits are needed) nor the positions
    // whose hidden states it asks for
    private PrefixCache.Match? Lookup(GenerationRequest req)
    {
        if (_prefix == null) return null;
        int key = AdapterKey(req.Adapter);
        if (key == int.MinValue) return null; // unloaded while waiting: admission fails with the adapter's error
        int cap = req.Embed is { } e ? Math.Min(req.Prompt.Length, e.Start + 1) : req.Prompt.Length;
        return _prefix.Acquire(key, req.Prompt.AsSpan(0, cap));
    }

    private int AdapterKey(string? adapter) => adapter == null ? -1 : _adapterKeys.GetValueOrDefault(adapter, int.MinValue);

    private void ReturnPages(List<int> pages)
    {
        if (pages.Count == 0) return;
        var freed = new KvSequence();
        freed.Pages.AddRange(pages);
        _cache.Release(freed);
        Interlocked.Add(ref _prefixEvictedPages, pages.Count);
    }

    private void DecodeStep()
    {
        foreach (var r in _running.Where(r => r.Cancel.IsCancellationRequested).ToList()) Finish(r, FinishReason.Cancelled);
        if (_running.Count == 0) return;
        var batch = _running.ToList();
        var start = Stopwatch.GetTimestamp();
        var slots = batch.Any(r => r.Slot >= 0) ? batch.Select(r => r.Slot).ToArray() : null;
        float[][] logits;
        using (Diagnostics.OpProfiler.Time("decode step", _model.Device))
            logits = _generator.Step(_cache, batch.Select(r => r.Seq).ToList(), batch.Select(r => r.Next).ToArray(), slots);
        for (int i = 0; i < batch.Count; i++) Accept(batch[i], logits[i]);
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        _stepSeconds = 0.9 * _stepSeconds + 0.1 * seconds;
        OnStep?.Invoke(batch.Count, seconds);
        Publish();
    }

    // samples the next token from logits, hands it to the client and ends the request where it should
    private void Accept(Running r, float[] logits)
    {
        int next;
        using (Diagnostics.OpProfiler.Time("sampling (host)", _model.Device)) next = r.Sampler.Next(logits, r.History);
        r.History.Add(next);
        r.Generated++;
        r.Next = next;
        r.Handle.Emit(next);
        if (r.Request.StopIds.Contains(next)) Finish(r, FinishReason.Stop);
        else if (r.Generated >= r.Request.MaxTokens || r.Seq.Length >= _model.Config.MaxPositionEmbeddings) Finish(r, FinishReason.Length);
        else if (r.Cancel.IsCancellationRequested) Finish(r, FinishReason.Cancelled);
    }

    private void Finish(Running r, FinishReason? reason, Exception? error = null)
    {
        _running.Remove(r);
        if (r.Match != null)
        {
            _prefix!.Release(r.Match);
            r.Match = null;
            r.Seq.Pages.RemoveAll(r.SharedPages.Contains); // the prefix cache keeps those
        }
        _cache.Release(r.Seq);
        if (r.Slot >= 0) _slots.Release(r.Slot);
        r.Slot = -1;
        if (error != null) r.Handle.Fail(error);
        else r.Handle.Finish(reason!.Value);
        Publish();
    }

    private void Publish()
    {
        Volatile.Write(ref _runningCount, _running.Count);
        int cached = _prefix?.CachedPages ?? 0;
        Volatile.Write(ref _prefixCachedPages, cached);
        Volatile.Write(ref _kvPagesUsed, _cache.UsedPages - (_prefix?.EvictablePages ?? 0));
        Volatile.Write(ref _adapterSlotsUsed, _slots.InUse);
    }

    public void Dispose()
    {
        lock (_lock) _stopping = true;
        _wake.Release();
        _loop.Join();
        _slots.Dispose();
        _cache.Dispose();
        _wake.Dispose();
    }
}
