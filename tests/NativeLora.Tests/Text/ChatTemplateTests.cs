using System.Text.Json;
using NativeLora.Text;

namespace NativeLora.Tests.Text;

/// <summary>
/// Errors, the API around ChatTemplate, and the semantics where @huggingface/jinja and Python Jinja
/// part ways. Expected strings here are for small hand-written templates; each was checked against
/// Python Jinja 3.1.6 set up as transformers sets it up (the fixture tests cover real templates).
/// </summary>
public class ChatTemplateTests
{
    private static readonly ChatMessage[] Conversation = [new("user", "hi"), new("assistant", null)];

    private static string Render(string template, IReadOnlyDictionary<string, object?>? extra = null) =>
        new ChatTemplate(template).Render(Conversation, addGenerationPrompt: false, "<s>", "</s>", extra);

    private static ChatTemplateException SyntaxError(string template) =>
        Assert.Throws<ChatTemplateException>(() => _ = new ChatTemplate(template))!;

    private static ChatTemplateException RenderError(string template) =>
        Assert.Throws<ChatTemplateException>(() => Render(template))!;

    // ---------------------------------------------------------------- syntax errors

    [Test]
    public void UnclosedBlockNamesWhereItOpened()
    {
        var e = SyntaxError("Hello\n{% for m in messages %}\n{{ m.content }}");
        Assert.That(e.Message, Does.Contain("line 2, column 1").And.Contain("'{% for %}'").And.Contain("never closed").And.Contain("endfor"));
        Assert.That((e.Line, e.Column), Is.EqualTo((3, 16)), "reported at the end of the template");
    }

    [Test]
    public void MismatchedEndTagNamesTheOpenBlock()
    {
        var e = SyntaxError("{% if x %}\n  {% endfor %}");
        Assert.That(e.Message, Does.StartWith("line 2, column 6").And.Contain("'{% endfor %}'").And.Contain("'{% if %}' from line 1"));
    }

    [TestCase("{{ 1 + }}", "line 1, column 8", "unexpected end of print statement")]
    [TestCase("a\n{% frobnicate %}", "line 2, column 4", "unknown statement '{% frobnicate %}'")]
    [TestCase("{{ 'unterminated }}", "line 1, column 4", "unterminated string literal")]
    [TestCase("{{ x | nosuchfilter }}", "line 1, column 8", "no filter named 'nosuchfilter'")]
    [TestCase("{{ x is nosuchtest }}", "line 1, column 9", "no test named 'nosuchtest'")]
    [TestCase("ok {# never closed", "line 1, column 4", "missing end of comment tag")]
    [TestCase("{{ (1 }}", "line 1, column 7", "unexpected '}', expected ')'")]
    [TestCase("{% set 1 = 2 %}", "line 1, column 8", "can only assign to a name")]
    [TestCase("{% break %}", "line 1, column 4", "outside of a for loop")]
    [TestCase("{{ messages[1, 2] }}", "line 1, column 14", "tuple subscripts")]
    [TestCase("{{ a $ b }}", "line 1, column 6", "unexpected character '$'")]
    public void SyntaxErrorsNameLineColumnAndConstruct(string template, string where, string what)
    {
        var e = SyntaxError(template);
        Assert.That(e.Message, Does.StartWith(where).And.Contain(what));
        Assert.That(e.RaisedByTemplate, Is.False);
    }

    // ---------------------------------------------------------------- unsupported constructs

    [TestCase("{% include 'other.jinja' %}", "'{% include %}' is not supported")]
    [TestCase("{% extends 'base' %}", "'{% extends %}' is not supported")]
    [TestCase("{% import 'm' as m %}", "'{% import %}' is not supported")]
    [TestCase("{% for m in messages recursive %}{% endfor %}", "recursive for loops")]
    [TestCase("{{ range(*[1, 2]) }}", "argument unpacking")]
    public void UnsupportedSyntaxFailsAtParse(string template, string what) =>
        Assert.That(SyntaxError(template).Message, Does.Contain(what));

    [TestCase("{{ 'a b c' | wordwrap(3) }}", "line 1, column 14: filter 'wordwrap' is not supported")]
    [TestCase("{{ '%s!' % 'x' }}", "printf-style string formatting")]
    [TestCase("{% set l = [] %}{{ l.append(1) }}", "list.append() is not allowed")]
    [TestCase("{{ strftime_now('%Q') }}", "strftime code '%Q' is not supported")]
    [TestCase("{{ [1] | map('wordwrap') | list }}", "map(): no supported filter named 'wordwrap'")]
    public void UnsupportedFeaturesFailWhenReached(string template, string what)
    {
        // Valid Jinja that Python would run: it only fails if the branch is taken.
        Assert.That(new ChatTemplate("{% if false %}" + template + "{% endif %}ok").Render(Conversation, false, null, null), Is.EqualTo("ok"));
        Assert.That(RenderError(template).Message, Does.Contain(what));
    }

    // ---------------------------------------------------------------- runtime errors and raise_exception

    [Test]
    public void RaiseExceptionCarriesTheTemplatesMessage()
    {
        var (text, bos, eos) = ChatTemplateFixtureTests.ReadTokenizerConfig(Path.Combine(Native.BindingCoverageTests.RepoRoot(), "tests", "fixtures", "chat_templates", "mistral7b_v01.tokenizer_config.json"));
        var template = new ChatTemplate(text);
        var e = Assert.Throws<ChatTemplateException>(() =>
            template.Render([new("user", "one"), new("assistant", "two"), new("assistant", "three")], false, bos, eos))!;
        Assert.That(e.Message, Is.EqualTo("Conversation roles must alternate user/assistant/user/assistant/..."));
        Assert.That(e.RaisedByTemplate, Is.True);
        Assert.That((e.Line, e.Column), Is.EqualTo((1, 110)), "at the raise_exception call");

        e = Assert.Throws<ChatTemplateException>(() => template.Render([new("tool", "x")], false, "<s>", "</s>"))!;
        Assert.That(e.Message, Is.EqualTo("Conversation roles must alternate user/assistant/user/assistant/..."));
    }

    [Test]
    public void RuntimeErrorsNameTheirLocation()
    {
        // Python's Undefined: reading an attribute of an undefined value raises.
        var e = RenderError("line one\n  {{ messages[0].content.nope.deeper }}");
        Assert.That(e.Message, Is.EqualTo("line 2, column 30: 'str object' has no attribute 'nope'"));
        Assert.That(RenderError("{{ missing + 1 }}").Message, Does.Contain("'missing' is undefined"));
        Assert.That(RenderError("{{ 1 + 2 ~ 3 }}").Message, Does.Contain("unsupported operand type(s) for +: 'int' and 'str'"), "~ binds tighter than +");
        Assert.That(RenderError("{{ 'a' + 1 }}").Message, Does.Contain("unsupported operand type(s) for +: 'str' and 'int'"));
        Assert.That(RenderError("{{ 1 // 0 }}").Message, Does.Contain("division or modulo by zero"));
        Assert.That(RenderError("{% for a, b in [[1, 2, 3]] %}{% endfor %}").Message, Does.Contain("too many values to unpack"));
        Assert.That(RenderError("{% set x = 1 %}{% set x.y = 2 %}").Message, Does.Contain("non-namespace"));
        Assert.That(RenderError("{{ 'x' | tojson }}{{ missing | tojson }}").Message, Does.Contain("not JSON serializable"));
        Assert.That(RenderError("{{ messages() }}").Message, Does.Contain("'list' object is not callable"));
    }

    [Test]
    public void HostileNestingFailsInsteadOfOverflowingTheStack()
    {
        Assert.That(SyntaxError("{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}").Message, Does.Contain("more than 100 deep"));
        Assert.That(SyntaxError("{{ " + string.Concat(Enumerable.Repeat("not ", 5000)) + "1 }}").Message, Does.Contain("more than 100 deep"));
        Assert.That(SyntaxError(string.Concat(Enumerable.Repeat("{% if true %}", 5000))).Message, Does.Contain("more than 100 deep"));
        Assert.That(Render("{{ " + new string('(', 50) + "1" + new string(')', 50) + " }}"), Is.EqualTo("1"));
        // Python stops endless recursion with RecursionError; here a bounded macro depth.
        Assert.That(RenderError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").Message, Does.Contain("more than 100 nested macro calls"));
        Assert.That(Render("{% macro f(n) %}{{ n }}{% if n < 50 %}{{ f(n + 10) }}{% endif %}{% endmacro %}{{ f(0) }}"), Is.EqualTo("01020304050"));
        Assert.That(RenderError("{{ 'x' * 1000000000 }}").Message, Does.Contain("too large"));
    }

    // ---------------------------------------------------------------- Python semantics (where @huggingface/jinja differs)

    [TestCase("{{ true }}|{{ false }}|{{ none }}|{{ [1, 'a', none, true] }}|{{ {'k': 'it\\'s'} }}|{{ (1,) }}|{{ ('a', 2) }}",
        "True|False|None|[1, 'a', None, True]|{'k': \"it's\"}|(1,)|('a', 2)")]
    [TestCase("{% for m in messages %}[{{ m.content }}]{% endfor %}", "[hi][None]")]
    [TestCase("{% set x = 0 %}{% for i in [1, 2, 3] %}{% set x = x + i %}{{ x }}{% endfor %}|{{ x }}", "123|0")]
    [TestCase("[{{ '\\n x \\n'.strip('\\n') }}]|[{{ '--a--'.lstrip('-') }}]|[{{ 'xxhixx'.rstrip('x') }}]", "[ x ]|[a--]|[xxhi]")]
    [TestCase("{{ 'héllo😀'|length }}|{{ 'a😀b'[1] }}|{{ 'a😀b'[::-1] }}", "6|😀|b😀a")]
    [TestCase("{{ 'hELLO wORLD'|title }}|{{ 'hELLO'|capitalize }}|{{ 'foo_bar baz'.title() }}|{{ 'hELLO'.capitalize() }}", "Hello World|Hello|Foo_Bar Baz|Hello")]
    [TestCase("{{ 'T' if 5 is divisibleby 5 }}{{ 'T' if 'a' is eq 'a' }}{{ 'T' if 3 is gt(2) }}{{ 'T' if 1 < 2 < 3 }}{{ 'F' if not (3 > 2 > 2) }}", "TTTTF")]
    [TestCase("[{{ missing }}]{{ 'u' if missing is undefined }}{{ missing|default('d') }}{{ missing|length }}{% for x in missing %}x{% endfor %}", "[]ud0")]
    [TestCase("{{ 1e3 }} {{ 2.5e-5 }} {{ 1e16 }} {{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ -7 // 2 }} {{ 2 ** -1 }}",
        "1000.0 2.5e-05 1e+16 0.30000000000000004 2.5 2 -2 -4 0.5")]
    [TestCase("{{ -2 ** 2 }} {{ 2 ** 3 ** 2 }} {{ 10 - 2 * 3 }} {{ -[1][0] }} {{ +3 }}", "4 64 4 -1 3")]
    [TestCase("{{ 'a\\x41\\u00e9\\\\d\\d' }}", "aAé\\d\\d")]
    [TestCase("{% raw %}{{ not evaluated }}{% endraw %}", "{{ not evaluated }}")]
    [TestCase("{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 7|round }} {{ 2.1|round(method='ceil') }} {{ -3.7|int }} {{ '12abc'|int }} {{ '3.9'|int }}",
        "2.0 4.0 2.67 7 3.0 -3 0 3")]
    [TestCase("{{ 0.125|round(2) }} {{ 9.995|round(2) }} {{ 99.5|round }} {{ -0.5|round }} {{ 1.5|round }} {{ 0.05|round(1) }} {{ 123.456|round(1, 'floor') }}",
        "0.12 9.99 100.0 -0.0 2.0 0.1 123.4")]
    [TestCase("{{ ['b','A','a','B']|unique|list }} {{ ['b','A','c']|sort|list }} {{ ['b','A','c']|sort(case_sensitive=true)|list }} {{ {'b':1,'A':2}|dictsort }}",
        "['b', 'A'] ['A', 'b', 'c'] ['A', 'b', 'c'] [('A', 2), ('b', 1)]")]
    [TestCase("{{ '<a href=\"x\">&\\'</a>'|escape }}|{{ [1,2,3]|sum }}|{{ [3,1,2]|max }}|{{ [3,1,2]|min }}|{{ 'a b  c'|wordcount }}|{{ [1,2]|count }}",
        "&lt;a href=&#34;x&#34;&gt;&amp;&#39;&lt;/a&gt;|6|3|1|3|2")]
    [TestCase("{{ {'a': 1.0, 'b': [1.5, 'é', none, true], 'c': 'x\\ny\"'}|tojson }}|{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}|{{ 'é'|tojson(ensure_ascii=true) }}|{{ [1,2]|tojson(separators=(',', ':')) }}",
        "{\"a\": 1.0, \"b\": [1.5, \"é\", null, true], \"c\": \"x\\ny\\\"\"}|{\"a\": 2, \"b\": 1}|\"\\u00e9\"|[1,2]")]
    [TestCase("{{ 'a' ~ 1 ~ true ~ none ~ missing }}", "a1TrueNone")]
    [TestCase("{{ loop is defined }}|{% for i in [1,2,3] %}{{ loop.cycle('a','b') }}{{ loop.previtem|default('-') }}{{ loop.nextitem|default('-') }} {% endfor %}", "False|a-2 b13 a2- ")]
    [TestCase("{% macro m(a, b=2) %}{{ a }}{{ b }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1) }}|{{ m(1, 3, 4, k=5) }}", "12(){}|13(4,){'k': 5}")]
    [TestCase("{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}", "2")]
    [TestCase("{% for x in [1,2,3,4,5] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", "13")]
    [TestCase("{{ 'a,b,c'.split(',', 1) }}|{{ '  a  b  '.split() }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'x'.join(['1','2']) }}|{{ 'abcabc'.replace('b', 'B', 1) }}|{{ 'abc'.replace('', '-') }}",
        "['a', 'b,c']|['a', 'b']|['a,b', 'c']|1x2|aBcabc|-a-b-c-")]
    [TestCase("{{ '  x'|indent(2, true) }}|{{ 'a\\nb'|indent('> ', first=true) }}|{{ 'a\\n\\nb'|indent(2, blank=true) }}", "    x|> a\n> b|a\n  \n  b")]
    [TestCase("{{ [{'a':{'b':1}},{'a':{'b':2}}]|map(attribute='a.b')|list }}|{{ [{'x':1},{}]|map(attribute='x', default=0)|list }}|{{ ['a','b']|map('upper')|list }}|{{ [1,2,3,4]|select('odd')|list }}|{{ [1,2,3,4]|reject('odd')|list }}",
        "[1, 2]|[1, 0]|['A', 'B']|[1, 3]|[2, 4]")]
    [TestCase("{{ [{'r':'u'},{'r':'a'},{'x':1}]|selectattr('r')|list|length }}|{{ [{'r':'u'},{'r':'a'},{'x':1}]|selectattr('r','defined')|list|length }}|{{ [{'r':'u'},{'x':1}]|rejectattr('r','defined')|list }}",
        "2|2|[{'x': 1}]")]
    [TestCase("{{ messages[0].items() | list }}|{{ messages[0]['items'] is defined }}|{{ messages[0].keys() | list }}", "[('role', 'user'), ('content', 'hi')]|True|['role', 'content']")]
    [TestCase("{% set ns = namespace(a=1) %}{{ ns.a }}{{ ns.missing is defined }}|{{ namespace({'x': 1}).x }}|{{ dict(a=1, b='c') }}", "1False|1|{'a': 1, 'b': 'c'}")]
    [TestCase("{% set x %}  inner  {% endset %}[{{ x }}]{% set y | trim %}  inner  {% endset %}[{{ y }}]", "[  inner  ][inner]")]
    [TestCase("{{ 'abc'[1:] }}{{ 'abc'[:-1] }}{{ [1,2,3,4,5][::2] }}{{ [1,2,3][5:] }}{{ [1,2,3][-10:2] }}{{ (1,2,3)[1:] }}", "bcab[1, 3, 5][][1, 2](2, 3)")]
    [TestCase("{{ 'x' if false }}|{{ none.attr }}|{{ 'str'.nope }}|{{ [1][3] }}|{{ messages[5] }}", "||||")]
    [TestCase("{{ [1, 2] == [1, 2] }}{{ (1, 2) == [1, 2] }}{{ 1 == 1.0 }}{{ 'a' < 'b' }}{{ [1, 2] < [1, 3] }}{{ none == none }}{{ '1' == 1 }}", "TrueFalseTrueTrueTrueTrueFalse")]
    [TestCase("{{ 'Hello'.startswith('He', 1) }}{{ 'Hello'.endswith(('x', 'lo')) }}{{ 'Hello'.find('l') }}{{ 'Hello'.count('l') }}{{ 'a\\nb\\r\\nc'.splitlines() }}", "FalseTrue22['a', 'b', 'c']")]
    [TestCase("{{ 'one' if true else 'two' if false else 'three' }}|{{ 1 if none else 2 }}|{{ 0 or '' or [] }}|{{ 1 and 0 }}|{{ not [] }}", "one|2|[]|0|True")]
    [TestCase("{{ 3 is odd }}{{ 4 is even }}{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ none is none }}{{ 1 is number }}{{ true is boolean }}{{ 1.0 is float }}{{ 1 is integer }}{{ true is integer }}{{ [1] is iterable }}{{ {} is mapping }}{{ 'a' is in 'abc' }}{{ 1 is sameas 1 }}{{ 'upper' is filter }}{{ 'odd' is test }}",
        "TrueTrueTrueTrueTrueTrueTrueTrueTrueFalseTrueTrueTrueTrueTrueTrue")]
    [TestCase("{{ 'ab' * 2 }}{{ [0] * 3 }}{{ 3 * 'x' }}", "abab[0, 0, 0]xxx")]
    [TestCase("{{ 'a,,b'.rsplit(',') }}{{ ',a,'.rsplit(',') }}{{ 'aaa'.rsplit('aa') }}{{ 'a b c'.rsplit(none, 1) }}{{ '  a b  '.rsplit(none, 1) }}{{ 'aaa'.split('aa') }}{{ ''.split(',') }}{{ ''.split() }}",
        "['a', '', 'b']['', 'a', '']['a', '']['a b', 'c']['  a', 'b']['', 'a'][''][]")]
    [TestCase("{{ '  a b  c  '.split(none, 1) }}{{ '  a b  c  '.rsplit(none, 1) }}{{ '  a  '.split(none, 0) }}{{ '  a  '.rsplit(none, 0) }}",
        "['a', 'b  c  ']['  a b', 'c']['a  ']['  a']")]
    [TestCase("{{ 'a' ~ [1, 'b'] }}|{{ ('a', 'b')|join('-') }}{{ {'x': 1}|list }}{{ 'ab'|list }}|{{ 'x' | string | length }}{{ none|string }}{{ 1.0|string }}", "a[1, 'b']|a-b['x']['a', 'b']|1None1.0")]
    [TestCase("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}|{{ 'été'|upper }}{{ 'ÉTÉ'|lower }}|{{ [1, 2, 3]|last }}{{ 'abc'|last }}{{ 'abc'|first }}{{ {'a': 1}|first }}", "37|ÉTÉété|3caa")]
    public void FollowsPythonJinja(string template, string expected) =>
        Assert.That(Render(template), Is.EqualTo(expected));

    // ---------------------------------------------------------------- whitespace and template text

    [TestCase("a\n", "a")] // keep_trailing_newline=False drops one trailing newline
    [TestCase("a\n\n", "a\n")]
    [TestCase("{% if true %}\r\nx\r\n{% endif %}\r\n", "x\n")] // \r\n becomes \n, as Python Jinja does
    [TestCase("  {%+ if true %}x{% endif %}|", "  x|")] // "+" turns lstrip_blocks off for one tag
    [TestCase("{% if true +%}\nx{% endif %}", "\nx")] // and trim_blocks
    [TestCase("  {% if true %}\n  x\n  {% endif %}\n", "  x\n")]
    [TestCase("a  {%- if true -%}  \n  b  {%- endif -%}  c", "abc")]
    [TestCase("{{ 'a' -}}   \n  {{- 'b' }}", "ab")]
    [TestCase("x {# c #}\ny\n  {# own line #}\nz", "x y\nz")]
    [TestCase("{% generation %}kept{% endgeneration %}", "kept")] // transformers' assistant-mask marker
    [TestCase("{{ {'a': {'b': 1}} }}", "{'a': {'b': 1}}")] // "}}" inside a dict is not the end of the tag
    public void TemplateTextAndWhitespaceControl(string template, string expected) =>
        Assert.That(Render(template), Is.EqualTo(expected));

    // ---------------------------------------------------------------- inputs

    private sealed class FixedClock(DateTimeOffset now) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => now;
        public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;
    }

    [Test]
    public void StrftimeNowUsesTheInjectedClock()
    {
        var template = new ChatTemplate("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M:%S %A %B %-d %I%p %j %%') }}")
        {
            Clock = new FixedClock(new DateTimeOffset(2025, 3, 5, 14, 7, 9, TimeSpan.Zero)),
        };
        Assert.That(template.Render([], false, null, null), Is.EqualTo("05 Mar 2025|2025-03-05 14:07:09 Wednesday March 5 02PM 064 %"));
    }

    [Test]
    public void VariablesSeenByTheTemplate()
    {
        var t = new ChatTemplate("{{ bos_token is defined }} {{ eos_token }} {{ tools is none }} {{ documents is none }} {{ add_generation_prompt }} {{ messages | length }}");
        Assert.That(t.Render(Conversation, true, null, "</s>"), Is.EqualTo("False </s> True True True 2"));

        var extra = new Dictionary<string, object?>
        {
            ["enable_thinking"] = false,
            ["n"] = 3,
            ["x"] = 0.5,
            ["names"] = new[] { "a", "b" },
            ["nested"] = new Dictionary<string, object?> { ["k"] = new List<object?> { 1L, null, true } },
            ["json"] = JsonDocument.Parse("{\"i\": 1, \"f\": 2.0, \"s\": \"é\", \"l\": [null]}").RootElement,
            ["tools"] = new[] { new Dictionary<string, object?> { ["name"] = "f" } },
            ["labels"] = new Dictionary<string, string> { ["a"] = "b" },
        };
        var u = new ChatTemplate("{{ enable_thinking }} {{ n + 1 }} {{ x * 2 }} {{ names | join }} {{ nested | tojson }} {{ json | tojson }} {{ tools[0].name }} {{ labels.a }}");
        Assert.That(u.Render([], false, null, null, extra),
            Is.EqualTo("False 4 1.0 ab {\"k\": [1, null, true]} {\"i\": 1, \"f\": 2.0, \"s\": \"é\", \"l\": [null]} f b"));
        Assert.That(() => u.Render([], false, null, null, new Dictionary<string, object?> { ["bad"] = new object() }), Throws.ArgumentException);
    }

    [Test]
    public void MessageFieldsReachTheTemplate()
    {
        var message = new ChatMessage("assistant", null)
        {
            Fields = new Dictionary<string, object?>
            {
                ["tool_calls"] = new[] { new Dictionary<string, object?> { ["function"] = new Dictionary<string, object?> { ["name"] = "get", ["arguments"] = new Dictionary<string, object?> { ["q"] = "x" } } } },
                ["reasoning_content"] = "because",
            },
        };
        var t = new ChatTemplate("{% for m in messages %}{{ m.content is none }} {{ m.reasoning_content }} {% for c in m.tool_calls %}{{ c.function.name }}({{ c.function.arguments | tojson }}){% endfor %}{% endfor %}");
        Assert.That(t.Render([message], false, null, null), Is.EqualTo("True because get({\"q\": \"x\"})"));
    }

    [Test]
    public void TemplateLevelSetDoesNotChangeTheInputs()
    {
        var t = new ChatTemplate("{% set messages = messages[1:] %}{{ messages | length }}");
        Assert.That(t.Render(Conversation, false, null, null), Is.EqualTo("1"));
        Assert.That(t.Render(Conversation, false, null, null), Is.EqualTo("1"), "rendering twice starts from the same inputs");
    }

    // ---------------------------------------------------------------- tokenizer_config.json

    [Test]
    public void ReadsTheRealFixtureConfigs()
    {
        string dir = Path.Combine(Native.BindingCoverageTests.RepoRoot(), "tests", "fixtures", "chat_templates");
        var llama3 = ChatTemplateFixtureTests.ReadTokenizerConfig(Path.Combine(dir, "llama3.tokenizer_config.json"));
        Assert.That((llama3.Bos, llama3.Eos), Is.EqualTo(("<|begin_of_text|>", "<|end_of_text|>")));
        var qwen3 = ChatTemplateFixtureTests.ReadTokenizerConfig(Path.Combine(dir, "qwen3.tokenizer_config.json"));
        Assert.That((qwen3.Bos, qwen3.Eos), Is.EqualTo(((string?)null, "<|im_end|>")));
        Assert.That(qwen3.Template, Does.Contain("namespace(multi_step_tool=true"));
    }
}
