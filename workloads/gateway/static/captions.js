// The captions page: microphone -> AudioWorklet (PCM16, 16 kHz where the browser allows) -> the
// gateway's /v1/stream -> captions that read like text. The transcript flows as one paragraph per
// sentence, and each target language sits beside it on the same row, so a sentence and its
// translations line up. What is still open (a partial, finals not yet translated, a
// translation.partial) is grey and replaced in place; a row never repeats.
// URLs are relative to the document base, so the page works behind a path prefix.
'use strict';
(() => {
  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  const ui = { toggle: $('toggle'), state: $('state'), latency: $('latency'), rate: $('rate'),
               message: $('message'), captions: $('captions'), heads: $('heads'), hint: $('hint'),
               rows: $('rows'), live: $('live'), announce: $('announce') };
  // Read by tests (and handy in the console): everything the page has received.
  const lt = window.__livetranslate = { state: 'idle', finals: [], translations: {}, partials: {},
                                        errors: [], latencies: [], sessionId: null,
                                        lastSegmentId: null, following: true, upstream: {} };
  let ws = null, audio = null, wanted = false, retry = 0;
  // The microphone's samples on the session's clock. Frames wait while no session is live (a
  // reconnect) and are kept a while after they are sent: a resumed session says which second it
  // has (session.started audioSeconds), and what was in flight when a replica went away goes again.
  const KEEP_SECONDS = 15, WAIT_SECONDS = 60;
  const mic = { frames: [], captured: 0, sent: 0, base: null, live: false };

  // ------------------------------------------------------------------ target languages
  // ?targets=es,fr asks the gateway for these languages (it refuses ones the pipeline does not
  // serve); without it the pipeline's own list, echoed in session.started, decides.
  const LANG = /^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$/;
  const asked = (params.get('targets') || '').split(',').map((s) => s.trim()).filter((s) => LANG.test(s));
  let targets = [];
  let names = null;
  try { names = new Intl.DisplayNames([navigator.language || 'en'], { type: 'language' }); } catch (e) { names = null; }

  function langName(code) {
    try { const n = names && names.of(code); if (n && n !== code) return n; } catch (e) { /* unknown tag */ }
    return code;
  }

  function setTargets(list) {
    const next = [...new Set(list)];
    if (next.join() === targets.join()) return;
    targets = next;
    ui.captions.style.setProperty('--cols', String(targets.length + 1));
    ui.heads.replaceChildren(ui.heads.firstElementChild);
    for (const lang of targets) {
      const head = document.createElement('div');
      head.className = 'head';
      head.dataset.lang = lang;
      head.append(langName(lang) + ' ');
      const code = document.createElement('span');
      code.className = 'code';
      code.textContent = lang;
      head.append(code);
      ui.heads.append(head);
    }
    groups.forEach(render);
  }

  // ------------------------------------------------------------------ sentence groups
  // A group is one row: the finals (and the live partial) of one sentence, and its translations.
  // The gateway says which finals form a sentence only when a translation(.partial) names their
  // segmentIds; until then a final joins the open group of its speaker. A group is sealed (takes
  // no more finals of its own accord) on sentence-final punctuation or a final translation, and
  // done (no longer grey) once sealed with every target language translated or failed.
  const slots = new Map();      // segmentId -> {id, text, final, speaker, group}
  const sentences = new Map();  // sentenceId -> group
  const groups = [];            // in transcript order
  let partialSlot = null, lastFinal = null;
  const SENTENCE_END = /[.!?…。！？][)"'’”\]]*$/;

  function keyOf(g) {
    let k = Infinity;
    for (const s of g.slots) k = Math.min(k, s.id);
    for (const id of g.named) k = Math.min(k, id);
    return k;
  }

  function speakerOf(g, except) {
    const first = g.slots.find((s) => s.final && s !== except);
    return first ? (first.speaker || null) : undefined;
  }

  function newGroup() {
    const g = { sentenceId: null, slots: [], named: new Set(), sealed: false, done: false, tr: {},
                el: null, src: null, cells: {} };
    groups.push(g);
    return g;
  }

  // Keeps groups (and their rows) in transcript order after a change of membership.
  function place(g) {
    const i = groups.indexOf(g);
    if (i >= 0) groups.splice(i, 1);
    const k = keyOf(g);
    let at = groups.findIndex((h) => keyOf(h) > k);
    if (at < 0) at = groups.length;
    groups.splice(at, 0, g);
    if (g.el) {
      const next = groups.slice(at + 1).find((h) => h.el);
      if (g.el.nextElementSibling !== (next ? next.el : null) || g.el.parentNode !== ui.rows) {
        ui.rows.insertBefore(g.el, next ? next.el : null);
      }
    }
  }

  function drop(g) {
    const i = groups.indexOf(g);
    if (i >= 0) groups.splice(i, 1);
    if (g.el) g.el.remove();
  }

  function move(slot, g) {
    const from = slot.group;
    if (from === g) return;
    if (from) {
      from.slots.splice(from.slots.indexOf(slot), 1);
      if (!from.slots.length && from.sentenceId === null) drop(from);
      else { render(from); place(from); }
    }
    slot.group = g;
    g.slots.push(slot);
    g.slots.sort((a, b) => a.id - b.id);
    render(g);
    place(g);
  }

  // The open group a new final of this speaker joins: the newest unsealed group whose finals are
  // this speaker's (or that has none yet); otherwise a new row.
  function openGroupFor(speaker, exclude) {
    for (let i = groups.length - 1; i >= 0; i--) {
      const g = groups[i];
      if (g.sealed || g === exclude) continue;
      const sp = speakerOf(g);
      if (sp === undefined || sp === (speaker || null)) return g;
    }
    return newGroup();
  }

  // Ids are the session's own, from 0. A session the gateway could not resume (or a new one after
  // "session ended") numbers from 0 again: its ids are shifted past the old session's, so its rows
  // follow the old ones and none of its finals is taken for a repeat of an old one.
  const ids = { segment: 0, sentence: 0, topSegment: -1, topSentence: -1 };
  function shiftIds(ev) {
    if (typeof ev.segmentId === 'number') ev.segmentId += ids.segment;
    if (Array.isArray(ev.segmentIds)) ev.segmentIds = ev.segmentIds.map((id) => id + ids.segment);
    if (typeof ev.sentenceId === 'number') ev.sentenceId += ids.sentence;
    for (const id of [ev.segmentId, ...(ev.segmentIds || [])]) {
      if (typeof id === 'number') ids.topSegment = Math.max(ids.topSegment, id);
    }
    if (typeof ev.sentenceId === 'number') ids.topSentence = Math.max(ids.topSentence, ev.sentenceId);
  }
  function sessionStarted(ev) {
    const same = ev.resumed && ev.sessionId === lt.sessionId;
    if (same || (ids.topSegment < 0 && ids.topSentence < 0)) return;
    ids.segment = ids.topSegment + 1;
    ids.sentence = ids.topSentence + 1;
    lt.lastSegmentId = null;
    // The old session's open sentence takes no more finals: the new session's start a new row.
    for (const g of groups) g.sealed = true;
    if (partialSlot && !partialSlot.final) removeSlot(partialSlot);
    partialSlot = lastFinal = null;
  }

  function slotFor(id) {
    let slot = slots.get(id);
    if (!slot) { slot = { id, text: '', final: false, speaker: null, group: null }; slots.set(id, slot); }
    return slot;
  }

  function removeSlot(slot) {
    slots.delete(slot.id);
    const g = slot.group;
    if (!g) return;
    g.slots.splice(g.slots.indexOf(slot), 1);
    if (!g.slots.length && g.sentenceId === null) drop(g);
    else render(g);
  }

  // The gateway names the finals of sentence `sid`: give it its row, pull those finals into it
  // and, once the sentence is final, push out the finals it does not cover (the next sentence's).
  function bindSentence(sid, ids, final) {
    let g = sentences.get(sid);
    if (!g) {
      const holder = ids.map((id) => slots.get(id)).find((s) => s && s.group);
      g = holder && holder.group.sentenceId === null ? holder.group : newGroup();
      g.sentenceId = sid;
      sentences.set(sid, g);
    }
    // A final translation's list is the sentence; a partial's may still grow.
    if (final) g.named = new Set(ids);
    else ids.forEach((id) => g.named.add(id));
    for (const id of ids) {
      const slot = slots.get(id);
      if (slot && slot.group !== g) move(slot, g);
    }
    if (final) {
      g.sealed = true;
      const covered = new Set(ids);
      let dest = null;
      for (const slot of [...g.slots]) {
        if (covered.has(slot.id)) continue;
        // A final goes to its speaker's open sentence; the live partial follows the final before it.
        if (slot.final) dest = openGroupFor(slot.speaker, g);
        else dest = dest || openGroupFor(lastFinal ? lastFinal.speaker : null, g);
        move(slot, dest);
      }
    }
    place(g);
    return g;
  }

  function groupOfSegment(id) {
    const slot = slots.get(id);
    if (slot && slot.group) return slot.group;
    return groups.find((g) => g.named.has(id)) || null;
  }

  // ------------------------------------------------------------------ rendering
  function cell(g, lang) {
    let c = g.cells[lang];
    if (!c) {
      c = g.cells[lang] = document.createElement('div');
      c.dataset.lang = lang;
      c.lang = lang;
    }
    return c;
  }

  function render(g) {
    if (!g.el) {
      g.el = document.createElement('div');
      g.el.className = 'row';
      const src = document.createElement('div');
      src.className = 'cell src';
      src.dataset.lang = 'source';
      g.src = document.createElement('p');
      src.append(g.src);
      g.el.append(src);
      place(g);
      ui.hint.hidden = true;
    }
    const settled = targets.every((lang) => g.tr[lang] && g.tr[lang].state !== 'partial');
    const wasDone = g.done;
    g.done = g.sealed && settled;
    g.el.classList.toggle('open', !g.done);
    if (g.sentenceId === null) delete g.el.dataset.sentence;
    else g.el.dataset.sentence = String(g.sentenceId);
    g.el.dataset.segments = g.slots.map((s) => s.id).join(' ');

    // The source paragraph: a speaker badge where the speaker changes (never an empty one).
    const parts = [];
    let speaker = null;
    let prev = null; // the text of the span before, null after a speaker badge
    for (const s of g.slots) {
      if (s.final && s.speaker && s.speaker !== speaker) {
        const badge = document.createElement('span');
        badge.className = 'speaker';
        badge.textContent = s.speaker;
        parts.push(badge);
        prev = null;
      }
      if (s.final) speaker = s.speaker || speaker;
      const span = document.createElement('span');
      span.className = s.final ? 'seg' : 'seg partial';
      span.dataset.segment = String(s.id);
      span.textContent = s.text;
      if (parts.length && (prev === null || spaced(prev, s.text))) parts.push(' ');
      parts.push(span);
      prev = s.text;
    }
    g.src.replaceChildren(...parts);

    const cells = targets.map((lang) => {
      const c = cell(g, lang);
      const t = g.tr[lang];
      c.className = 'cell tr' + (!t ? ' empty' : t.state === 'partial' ? ' pending'
        : t.state === 'failed' ? ' failed' : '');
      c.replaceChildren();
      c.title = (t && t.title) || '';
      if (t) {
        c.append(t.text);
        if (t.quality && !/^(ok|retried)$/.test(t.quality)) {
          const q = document.createElement('span');
          q.className = 'quality';
          q.textContent = t.quality.replace(/:.*/, '');
          q.title = `translation quality: ${t.quality}`;
          c.append(' ', q);
        }
      }
      return c;
    });
    // Cells in column order (a language added later, or ?targets reordering them).
    g.el.replaceChildren(g.el.firstElementChild, ...cells);
    if (g.done && !wasDone) announce(g);
  }

  // Finals join with a space, except where either side is in a script written without spaces
  // (Japanese, Chinese, Thai: a final may end inside a word). The same rule as the gateway's
  // livetranslate/text.py join_texts.
  function spaced(left, right) {
    const unspaced = /[\u0e00-\u0eff\u1000-\u109f\u3000-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]/;
    return !(unspaced.test(left.slice(-1)) || unspaced.test(right.slice(0, 1)));
  }

  function announce(g) {
    const p = document.createElement('p');
    p.textContent = [g.slots.map((s) => s.text).reduce((out, t) => (out && spaced(out, t) ? `${out} ${t}` : out + t), ''),
      ...targets.map((lang) => g.tr[lang] && g.tr[lang].state === 'final' ? `${langName(lang)}: ${g.tr[lang].text}` : '')]
      .filter(Boolean).join(' — ');
    ui.announce.append(p);
    while (ui.announce.childElementCount > 6) ui.announce.firstElementChild.remove();
  }

  // ------------------------------------------------------------------ following the live edge
  // The page follows the newest caption until the user scrolls away from it; then it stays put
  // and "Jump to live" brings it back (so does scrolling to the bottom again).
  const EDGE_PX = 48;
  function atEdge() {
    const c = ui.captions;
    return c.scrollHeight - c.scrollTop - c.clientHeight <= EDGE_PX;
  }
  function setFollowing(on) {
    lt.following = on;
    ui.live.hidden = on;
  }
  function follow() {
    if (lt.following) ui.captions.scrollTop = ui.captions.scrollHeight;
  }
  ui.captions.addEventListener('scroll', () => {
    const edge = atEdge();
    if (edge !== lt.following) setFollowing(edge);
  }, { passive: true });
  window.addEventListener('resize', follow);
  ui.live.addEventListener('click', () => {
    setFollowing(true);
    follow();
    ui.captions.focus({ preventScroll: true });
  });

  // ------------------------------------------------------------------ connection state
  const STATES = { idle: 'idle', connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…',
                   upstream: 'upstream unavailable', ended: 'ended', error: 'error' };
  function setState(state, message, isError) {
    lt.state = state;
    ui.state.textContent = STATES[state] || state;
    ui.state.dataset.state = state;
    if (message !== undefined) {
      ui.message.textContent = message;
      ui.message.className = isError ? 'error' : '';
    }
    ui.hint.textContent = state === 'idle' || state === 'error' || state === 'ended'
      ? 'Start the microphone, then speak — captions appear here' : 'Speak — captions appear here';
  }

  // upstream_unavailable names the service ("audio service unavailable ...", "translation ...");
  // there is no "recovered" event: the service is back when its next event arrives.
  function upstreamDown(message) {
    const m = /^(\w+) service/.exec(message || '');
    lt.upstream[m ? m[1] : 'upstream'] = true;
    setState('upstream', message, true);
  }
  function upstreamUp(which) {
    if (!lt.upstream[which]) return;
    delete lt.upstream[which];
    if (lt.state !== 'upstream') return;
    const still = Object.keys(lt.upstream);
    if (still.length) setState('upstream');
    else setState('live', 'Listening…');
  }

  function streamUrl() {
    const url = new URL('v1/stream', document.baseURI);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    if (params.get('token')) url.searchParams.set('token', params.get('token'));
    return url.toString();
  }

  function showLatency(seconds) {
    lt.latencies.push(seconds);
    const recent = lt.latencies.slice(-20).sort((a, b) => a - b);
    const median = recent[Math.floor(recent.length / 2)];
    ui.latency.textContent = `latency ${seconds.toFixed(2)} s (median ${median.toFixed(2)} s)`;
  }

  // ------------------------------------------------------------------ events
  function onEvent(ev) {
    if (ev.type === 'session.started') sessionStarted(ev);
    else shiftIds(ev);
    switch (ev.type) {
      case 'session.started':
        lt.sessionId = ev.sessionId;
        resumeAudio(ev);
        if (Array.isArray(ev.targetLanguages)) setTargets(ev.targetLanguages);
        retry = 0;
        lt.upstream = {};
        setState('live', ev.resumed ? 'Resumed session ' + ev.sessionId : 'Listening…');
        break;
      case 'transcript.partial': {
        upstreamUp('audio');
        let slot = slots.get(ev.segmentId);
        if (slot && slot.final) break;  // a final never changes
        if (partialSlot && partialSlot !== slot && !partialSlot.final) removeSlot(partialSlot);
        slot = partialSlot = slotFor(ev.segmentId);
        slot.text = ev.text;
        if (!slot.group) {
          const home = lastFinal && lastFinal.group && !lastFinal.group.sealed ? lastFinal.group : null;
          move(slot, home || openGroupFor(lastFinal ? lastFinal.speaker : null));
        }
        render(slot.group);
        break;
      }
      case 'transcript.final': {
        upstreamUp('audio');
        const own = ev.segmentId - ids.segment;  // the session's own id, as resume asks for it
        if (lt.lastSegmentId !== null && own <= lt.lastSegmentId) break;
        lt.lastSegmentId = own;
        lt.finals.push(ev);
        if (partialSlot && partialSlot.id !== ev.segmentId && !partialSlot.final) removeSlot(partialSlot);
        partialSlot = null;
        const slot = slotFor(ev.segmentId);
        Object.assign(slot, { text: ev.text, final: true, speaker: ev.speaker || null });
        lastFinal = slot;
        const g = slot.group;
        const keep = g && (g.named.has(slot.id)
          || (!g.sealed && [undefined, slot.speaker].includes(speakerOf(g, slot))));
        if (!keep) {
          const named = groups.find((h) => h.named.has(slot.id));
          move(slot, named || openGroupFor(slot.speaker));
        }
        // The gateway closes a sentence on its final punctuation too: start the next row now
        // rather than when the translation arrives (a translation naming more pulls them back).
        if (SENTENCE_END.test(ev.text.trim())) slot.group.sealed = true;
        render(slot.group);
        if (typeof ev.latency === 'number') showLatency(ev.latency);
        break;
      }
      case 'translation.partial': {
        upstreamUp('translation');
        const g = bindSentence(ev.sentenceId, ev.segmentIds || [], false);
        const t = g.tr[ev.language];
        if (!t || t.state === 'partial') {
          g.tr[ev.language] = { text: ev.text, state: 'partial' };
          lt.partials[ev.language] = (lt.partials[ev.language] || 0) + 1;
        }
        if (!targets.includes(ev.language)) setTargets([...targets, ev.language]);
        render(g);
        break;
      }
      case 'translation': {
        upstreamUp('translation');
        (lt.translations[ev.language] = lt.translations[ev.language] || []).push(ev);
        const ids = ev.segmentIds || (ev.segmentId != null ? [ev.segmentId] : []);
        const g = bindSentence(ev.sentenceId ?? `seg${ev.segmentId}`, ids, true);
        g.tr[ev.language] = { text: ev.text, state: 'final', quality: ev.quality };
        if (!targets.includes(ev.language)) setTargets([...targets, ev.language]);
        render(g);
        break;
      }
      case 'error':
        lt.errors.push(ev);
        if (ev.language && (ev.sentenceId != null || ev.segmentId != null)) {
          // One sentence's translation into one language failed: say so in its cell.
          let g = (ev.sentenceId != null && sentences.get(ev.sentenceId)) || groupOfSegment(ev.segmentId);
          if (g && ev.sentenceId != null && g.sentenceId === null) {
            g.sentenceId = ev.sentenceId;
            sentences.set(ev.sentenceId, g);
          }
          if (g) {
            g.sealed = true;
            g.tr[ev.language] = { text: 'translation unavailable', state: 'failed', title: `${ev.code}: ${ev.message}` };
            render(g);
          } else {
            setState(lt.state, `${ev.code}: ${ev.message}`, true);
          }
        } else if (ev.code === 'upstream_unavailable') {
          upstreamDown(ev.message);
        } else {
          setState(lt.state, `${ev.code}: ${ev.message}`, true);
        }
        break;
      case 'session.ended':
        setState('ended', 'Session ended');
        lt.sessionId = null;
        break;
    }
    follow();
  }

  // ------------------------------------------------------------------ the socket
  function connect() {
    if (retry) setState('reconnecting');
    else setState('connecting', 'Connecting to the gateway…');
    const socket = ws = new WebSocket(streamUrl());
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => {
      const start = { type: 'session.start', sampleRate: audio.context.sampleRate,
                      encoding: 'pcm_s16le', channels: 1 };
      if (asked.length) start.targetLanguages = asked;
      if (lt.sessionId) { start.sessionId = lt.sessionId; start.lastSegmentId = lt.lastSegmentId ?? -1; }
      socket.send(JSON.stringify(start));
    };
    socket.onmessage = (m) => {
      lt.received = (lt.received || 0) + 1;
      try { onEvent(JSON.parse(m.data)); } catch (e) { console.error(e); }
    };
    socket.onclose = (e) => {
      if (ws !== socket) return;
      const wasLive = mic.live;
      ws = null;
      mic.live = false;
      if (!wanted) return;
      if (e.code === 1008) {  // refused (token, origin, policy): retrying will not help
        setState('error', `Connection refused: ${e.reason || 'policy'}`, true);
        return;
      }
      if (e.code === 1012 && wasLive) {
        // The replica hands the session over (it drains): another one takes it, at once.
        setState('reconnecting', 'Moving to another server…');
        setTimeout(() => { if (wanted && !ws) connect(); }, 0);
        return;
      }
      // 1012 before a session started: a draining replica refused it; try again soon.
      const delay = e.code === 1012 ? Math.min(2000, 100 * 2 ** retry++) : Math.min(10000, 500 * 2 ** retry++);
      setState('reconnecting', `Connection lost (${e.code}); retrying in ${(delay / 1000).toFixed(1)} s`);
      setTimeout(() => { if (wanted && !ws) connect(); }, delay);
    };
  }

  // ------------------------------------------------------------------ the microphone
  function captured(data) {
    mic.frames.push({ at: mic.captured, data });
    mic.captured += data.byteLength / 2;
    const rate = audio ? audio.context.sampleRate : 16000;
    // Disconnected for long: the oldest audio goes, unsent or not (the session skips it).
    while (mic.frames.length && mic.frames[0].at < mic.captured - WAIT_SECONDS * rate) {
      const f = mic.frames.shift();
      mic.sent = Math.max(mic.sent, f.at + f.data.byteLength / 2);
    }
    pump();
  }

  function pump() {
    if (!ws || ws.readyState !== WebSocket.OPEN || !mic.live) return;
    for (const f of mic.frames) {
      const n = f.data.byteLength / 2;
      if (f.at + n <= mic.sent) continue;
      const skip = Math.max(0, mic.sent - f.at);
      ws.send(skip ? f.data.slice(skip * 2) : f.data);
      mic.sent = f.at + n;
    }
    const rate = audio ? audio.context.sampleRate : 16000;
    while (mic.frames.length && mic.frames[0].at + mic.frames[0].data.byteLength / 2
           <= mic.sent - KEEP_SECONDS * rate) mic.frames.shift();
  }

  // session.started: a resumed session says at which second its audio goes on; send from there.
  function resumeAudio(ev) {
    const rate = audio ? audio.context.sampleRate : 16000;
    const has = ev.resumed && typeof ev.audioSeconds === 'number';
    if (has && mic.base !== null) {
      const at = Math.round((ev.audioSeconds - mic.base) * rate);
      const oldest = mic.frames.length ? mic.frames[0].at : mic.sent;
      if (at < mic.sent) mic.sent = Math.max(at, oldest);
    }
    mic.base = (has ? ev.audioSeconds : 0) - mic.sent / rate;  // the session goes on at mic.sent
    mic.live = true;
    pump();
  }

  // Capture at 16 kHz, the rate the audio service decodes, where the browser can: it resamples the
  // microphone itself, the page sends a third of the bytes of 48 kHz, and the gateway passes the
  // audio through instead of resampling it. A browser that cannot feed a microphone into a context
  // of another rate (NotSupportedError) captures at the device's own rate, which the gateway
  // resamples; so does ?rate=native.
  async function openContext(stream) {
    if (params.get('rate') !== 'native') {
      let context = null;
      try {
        context = new AudioContext({ sampleRate: 16000 });
        return { context, source: context.createMediaStreamSource(stream) };
      } catch (e) {
        console.warn('no 16 kHz capture; using the device rate', e);
        if (context) await context.close();
      }
    }
    const context = new AudioContext();
    return { context, source: context.createMediaStreamSource(stream) };
  }

  async function start() {
    wanted = true;
    ui.toggle.textContent = 'Stop';
    setState('connecting', 'Opening the microphone…');
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
      const { context, source } = await openContext(stream);
      await context.audioWorklet.addModule('static/pcm-worklet.js');
      const node = new AudioWorkletNode(context, 'pcm-capture');
      node.port.onmessage = (m) => {
        lt.framesCaptured = (lt.framesCaptured || 0) + 1;
        captured(m.data);
      };
      // A worklet only runs while the graph pulls it: feed its (silent) output to the speakers.
      source.connect(node).connect(context.destination);
      audio = { stream, context, node };
      if (context.state === 'suspended') await context.resume();
      ui.rate.textContent = `${(context.sampleRate / 1000).toFixed(1)} kHz`;
      ui.rate.hidden = false;
      connect();
    } catch (e) {
      wanted = false;
      ui.toggle.textContent = 'Start microphone';
      setState('error', `Microphone unavailable: ${e.message || e}`, true);
    }
  }

  function stop() {
    wanted = false;
    ui.toggle.textContent = 'Start microphone';
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'session.end' }));
    if (audio) {
      audio.node.disconnect();
      audio.stream.getTracks().forEach((t) => t.stop());
      audio.context.close();
      audio = null;
    }
  }

  setTargets(asked);
  setState('idle');
  ui.toggle.addEventListener('click', () => (wanted ? stop() : start()));
  if (params.get('autostart') === '1') start();
})();
